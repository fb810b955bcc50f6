//! A resumable job with the blocking client: resume the session if an earlier run left it,
//! else create it; checkpoint after every step (fenced by epoch); complete at the end.
//!
//!     cargo run --example resumable -- NAME STEPS

use sessiond_client::{CheckpointInfo, Client, CreateOptions, Error};

fn step_of(checkpoint: Option<CheckpointInfo>) -> u64 {
    checkpoint
        .and_then(|c| c.payload)
        .and_then(|p| p.0.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "example-job".into());
    let steps: u64 = args.next().map_or(Ok(10), |s| s.parse())?;

    let mut client = Client::connect_default()?;
    let (info, mut step) = match client.resume(&name, None, false) {
        Ok(r) => (r.session, step_of(r.checkpoint)),
        Err(Error::NotFound(_)) => (client.create(&name, CreateOptions::default())?, 0),
        Err(e) => return Err(e.into()),
    };
    println!("{name}: epoch {}, starting after step {step}", info.epoch);
    let mut session = client.handle(info);
    while step < steps {
        step += 1;
        // ... one step of real work ...
        let cp = session.checkpoint(step.to_le_bytes().to_vec())?;
        println!("step {step}: checkpoint {}", cp.number);
    }
    session.complete()?;
    Ok(())
}
