//! `sandbox serve [--seed N] [--members N] [--events N] [--klaviyo-port P] [--trifft-port P]
//! [--record-dir D] [--rates real|unlimited]`: both emulators on loopback until Ctrl-C.
//! `sandbox demo [--seed N] [--members N] [--events N] [--events-dir D]`: the three
//! functions end to end against them (see `sandbox::demo`); exit code 0 only when every
//! check passes.

use std::path::PathBuf;
use std::process::ExitCode;

use sandbox::demo::{self, DemoOptions};
use sandbox::{KlaviyoRates, Sandbox, SandboxConfig};

const USAGE: &str =
    "usage: sandbox serve [--seed N] [--members N] [--events N] [--klaviyo-port P] \
[--trifft-port P] [--record-dir DIR] [--rates real|unlimited]
       sandbox demo [--seed N] [--members N] [--events N] [--events-dir DIR]";

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .parse()
        .map_err(|_| format!("{flag}: '{value}' is not a valid number"))
}

fn parse_serve(args: impl Iterator<Item = String>) -> Result<SandboxConfig, String> {
    let mut config = SandboxConfig::default();
    let mut args = args;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seed" => config.seed = number(&flag, args.next())?,
            "--members" => config.members = number(&flag, args.next())?,
            "--events" => config.events = number(&flag, args.next())?,
            "--klaviyo-port" => config.klaviyo_port = number(&flag, args.next())?,
            "--trifft-port" => config.trifft_port = number(&flag, args.next())?,
            "--record-dir" => {
                config.record_dir = Some(PathBuf::from(
                    args.next().ok_or("--record-dir needs a directory")?,
                ));
            }
            "--rates" => {
                config.klaviyo_rates = match args.next().as_deref() {
                    Some("real") => KlaviyoRates::Real,
                    Some("unlimited") => KlaviyoRates::Unlimited,
                    Some(other) => {
                        return Err(format!("--rates: '{other}' is not 'real' or 'unlimited'"));
                    }
                    None => return Err("--rates needs 'real' or 'unlimited'".into()),
                }
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(config)
}

fn parse_demo(args: impl Iterator<Item = String>) -> Result<DemoOptions, String> {
    let mut options = DemoOptions::default();
    let mut args = args;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seed" => options.seed = number(&flag, args.next())?,
            "--members" => options.members = number(&flag, args.next())?,
            "--events" => options.events = number(&flag, args.next())?,
            "--events-dir" => {
                options.events_dir =
                    PathBuf::from(args.next().ok_or("--events-dir needs a directory")?);
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(options)
}

async fn run_demo(options: DemoOptions) -> ExitCode {
    println!(
        "sandbox demo: running every sample in {} (standard-sync prints its CloudWatch EMF \
         metric lines as it does in Lambda; the report follows)\n",
        options.events_dir.display()
    );
    match demo::run(options).await {
        Ok(report) => {
            print!("{}", report.render());
            if report.failed() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sandbox demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_environment(sandbox: &Sandbox, config: &SandboxConfig) {
    let secrets = demo::sandbox_secrets_json(config);
    println!(
        "Klaviyo emulator: {}  (private key {})",
        sandbox.klaviyo_url(),
        config.klaviyo_api_key
    );
    println!(
        "TRIFFT emulator:  {}  (Bearer token {})",
        sandbox.trifft_url(),
        config.trifft_token
    );
    println!(
        "Data: seed {}, {} members, {} events",
        config.seed, config.members, config.events
    );
    if let Some(dir) = &config.record_dir {
        println!("Recording to {}", dir.display());
    }
    println!("\nFunction environment (paste into your shell):\n");
    println!("export KLAVIYO_BASE_URL={}", sandbox.klaviyo_url());
    println!("export TRIFFT_BASE_URL={}", sandbox.trifft_url());
    println!("export SANDBOX_SECRETS_JSON='{secrets}'");
    println!("\nThen, with `cargo lambda watch` running in that shell, one sample per function:\n");
    for (function, sample) in [
        (demo::KLAVIYO_WEBHOOK, "credit_points.json"),
        (demo::STANDARD_SYNC, "scheduler-incremental.json"),
        (demo::CUSTOM_EVENTS, "challenge-completed.json"),
    ] {
        println!("cargo lambda invoke {function} --data-file events/{function}/{sample}");
    }
    println!("\nServing until Ctrl-C.");
}

async fn serve(config: SandboxConfig) -> ExitCode {
    let sandbox = match Sandbox::start(config.clone()).await {
        Ok(sandbox) => sandbox,
        Err(e) => {
            eprintln!("sandbox: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_environment(&sandbox, &config);
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("sandbox: cannot wait for Ctrl-C: {e}");
    }
    sandbox.stop().await;
    ExitCode::SUCCESS
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("serve") => match parse_serve(args) {
            Ok(config) => serve(config).await,
            Err(message) => {
                eprintln!("sandbox serve: {message}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("demo") => match parse_demo(args) {
            Ok(options) => run_demo(options).await,
            Err(message) => {
                eprintln!("sandbox demo: {message}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("sandbox: unknown command '{other}'\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn parses_every_flag() {
        let c = parse_serve(args(&[
            "--seed",
            "9",
            "--members",
            "10",
            "--events",
            "20",
            "--klaviyo-port",
            "8081",
            "--trifft-port",
            "8082",
            "--record-dir",
            "/tmp/r",
            "--rates",
            "unlimited",
        ]))
        .unwrap();
        assert_eq!(
            (c.seed, c.members, c.events, c.klaviyo_port, c.trifft_port),
            (9, 10, 20, 8081, 8082)
        );
        assert_eq!(c.klaviyo_rates, KlaviyoRates::Unlimited);
        assert_eq!(c.record_dir, Some(PathBuf::from("/tmp/r")));
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(
            parse_serve(args(&["--seed"])).unwrap_err(),
            "--seed needs a value"
        );
        assert_eq!(
            parse_serve(args(&["--members", "ten"])).unwrap_err(),
            "--members: 'ten' is not a valid number"
        );
        assert_eq!(
            parse_serve(args(&["--rates", "fast"])).unwrap_err(),
            "--rates: 'fast' is not 'real' or 'unlimited'"
        );
        assert_eq!(
            parse_serve(args(&["--colour"])).unwrap_err(),
            "unknown option '--colour'"
        );
    }
}
