//! A short crash-torture run (the long one is `sessiond-torture --rounds 1000`).

use sessiond_tests::torture::Torture;

#[test]
fn dozens_of_kill_9_rounds_lose_nothing_and_damage_never_serves_wrong_bytes() {
    let seed = std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x05e5_510d);
    let rounds: u64 = std::env::var("TORTURE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut t = Torture::new(seed);
    for r in 0..rounds {
        if let Err(e) = t.round() {
            panic!("round {r} (seed {seed:#x}): {e}\n{}", t.daemon.log());
        }
    }
    println!("{:?}", t.totals);
    assert!(t.totals.acknowledged > 0);
}
