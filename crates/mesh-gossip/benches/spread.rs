//! The gossip simulation benchmark (`scripts/bench.sh gossip`): N = 1000 peers, fanout 3, over
//! many seeds: rounds to 99 % and 100 % coverage of live peers and the most envelopes one peer
//! receives in a round, uniform and trust-weighted, without and with 10 % loss and 10 % dead
//! peers, pushing only (ttl 0) and with the deployed one forward (ttl 1). Deterministic: the same
//! seeds give the same table. Prints Markdown for docs/BENCHMARKS.md and checks the targets.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_methods)]

use mesh_gossip::sim::{SimConfig, Summary, Weighting, summarise};

fn fmt(x: Option<usize>) -> String {
    x.map_or("never".into(), |r| r.to_string())
}

fn main() {
    let peers: usize = std::env::var("MESH_BENCH_PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seeds: u64 = std::env::var("MESH_BENCH_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    println!("N = {peers}, fanout 3, {seeds} seeds each\n");
    println!(
        "| weighting | loss / dead | ttl | 99 %: p50 / p95 / worst | 100 %: p50 / p95 / worst | max load / round | max ÷ mean |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut failures = Vec::new();
    for ttl in [0u8, 1] {
        for (weighting, name) in [(Weighting::Uniform, "uniform"), (Weighting::Trust, "trust")] {
            for (loss, dead) in [(0.0, 0.0), (0.1, 0.1)] {
                let mut config = SimConfig {
                    loss,
                    dead,
                    ttl,
                    ..SimConfig::new(peers, weighting)
                };
                if let Some(mix) = std::env::var("MESH_BENCH_MIX")
                    .ok()
                    .and_then(|v| v.parse().ok())
                {
                    config.selection.mix = mix;
                }
                if let Some(cap) = std::env::var("MESH_BENCH_MAX_SHARE")
                    .ok()
                    .and_then(|v| v.parse().ok())
                {
                    config.selection.max_share = cap;
                }
                let started = std::time::Instant::now();
                let s: Summary = summarise(&config, 0..seeds);
                println!(
                    "| {name} | {:.0} % / {:.0} % | {ttl} | {} / {} / {} | {} / {} / {} | {} | {:.1} |",
                    loss * 100.0,
                    dead * 100.0,
                    fmt(s.to_99[0]),
                    fmt(s.to_99[1]),
                    fmt(s.to_99[2]),
                    fmt(s.to_100[0]),
                    fmt(s.to_100[1]),
                    fmt(s.to_100[2]),
                    s.max_load,
                    s.max_over_mean,
                );
                eprintln!(
                    "  ({name}, loss {loss}, ttl {ttl}: {:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                // The targets, for the push-only protocol the theory describes.
                if ttl == 0 {
                    let lossy = loss > 0.0 || weighting == Weighting::Trust;
                    let limit_99 = if lossy { 9 } else { 7 };
                    if s.to_99[1].is_none_or(|r| r > limit_99) {
                        failures.push(format!(
                            "{name} loss {loss}: 99 % at p95 {:?} > {limit_99}",
                            s.to_99[1]
                        ));
                    }
                    if s.to_100[1].is_none_or(|r| r > 13) {
                        failures.push(format!(
                            "{name} loss {loss}: 100 % at p95 {:?} > 13",
                            s.to_100[1]
                        ));
                    }
                }
                if s.max_over_mean > 10.0 {
                    failures.push(format!(
                        "{name} loss {loss} ttl {ttl}: max load {:.1}x the mean",
                        s.max_over_mean
                    ));
                }
            }
        }
    }
    if failures.is_empty() {
        println!("\nAll targets met.");
    } else {
        println!("\nTargets missed:\n- {}", failures.join("\n- "));
        std::process::exit(1);
    }
}
