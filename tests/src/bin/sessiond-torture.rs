//! Long crash-torture run: `sessiond-torture [--rounds N] [--seed S]`. Prints the totals for
//! RELIABILITY.md; exits non-zero at the first violation.

use sessiond_tests::torture::Torture;

fn main() {
    let mut rounds = 1000u64;
    let mut seed = std::process::id() as u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (a.as_str(), value) {
            ("--rounds", Some(v)) => rounds = v,
            ("--seed", Some(v)) => seed = v,
            _ => {
                eprintln!("usage: sessiond-torture [--rounds N] [--seed S]");
                std::process::exit(2);
            }
        }
    }
    let started = std::time::Instant::now();
    let mut t = Torture::new(seed);
    for r in 0..rounds {
        if let Err(e) = t.round() {
            eprintln!("FAILED in round {r} (seed {seed}): {e}");
            std::process::exit(1);
        }
        if (r + 1) % 100 == 0 {
            eprintln!("{} rounds, {:?}", r + 1, t.totals);
        }
    }
    println!(
        "seed {seed}, {:.0} s: {:?}",
        started.elapsed().as_secs_f64(),
        t.totals
    );
}
