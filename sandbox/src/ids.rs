//! Identifiers shaped like the vendors' (UUIDs for TRIFFT, 26-character ids for Klaviyo).

/// A version-4-shaped UUID from 128 random bits.
pub(crate) fn uuid(rng: &mut fastrand::Rng) -> String {
    format_uuid(rng.u128(..))
}

pub(crate) fn format_uuid(bits: u128) -> String {
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

const KLAVIYO_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A Klaviyo-style id: 26 characters of Crockford base 32, like `01J8Z3...`.
pub(crate) fn klaviyo_id(rng: &mut fastrand::Rng) -> String {
    let mut id = String::from("01");
    for _ in 0..24 {
        id.push(KLAVIYO_ALPHABET[rng.usize(..KLAVIYO_ALPHABET.len())] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_look_like_version_4() {
        let id = format_uuid(u128::MAX);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(format_uuid(0), "00000000-0000-4000-8000-000000000000");
    }
}
