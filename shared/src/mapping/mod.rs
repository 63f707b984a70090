//! Pure functions that turn one vendor's data into the other's.

pub mod custom;
pub mod standard;
