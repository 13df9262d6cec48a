//! What a gossip round costs one peer (`scripts/bench.sh idle`): whole-mesh rounds with the real
//! node (`mesh_gossip::rounds`), N = 20 (every peer linked to the other 19) and N = 1,000 (16
//! links each), with 0, 1, 10 and 100 peers' telemetry news each round. Per peer per round, after
//! the mesh has settled: envelopes sent, bytes sent, entries verified (new) and held (not
//! verified), and pairs still behind. Prints Markdown for docs/BENCHMARKS.md.
//!
//! `MESH_ROUNDS=peers,warmup,measured[,changes]` runs one mesh only, quietly: the callgrind runs
//! of `scripts/bench.sh idle` count instructions for `measured` = 0 and = 10 and divide the
//! difference, so the set-up (key generation, the first rounds) cancels out.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use mesh_gossip::rounds::{Mesh, RoundCost, RoundsConfig};

fn run(peers: usize, changes: usize, warmup: usize, measured: usize) -> (Vec<RoundCost>, u64) {
    let config = RoundsConfig {
        changes,
        ..RoundsConfig::new(peers)
    };
    let mut mesh = Mesh::new(config, 7);
    for _ in 0..warmup {
        mesh.round();
    }
    let costs: Vec<RoundCost> = (0..measured).map(|_| mesh.round()).collect();
    let behind = costs.last().map_or(0, |c| c.behind);
    (costs, behind)
}

fn main() {
    if let Ok(spec) = std::env::var("MESH_ROUNDS") {
        let v: Vec<usize> = spec.split(',').map(|x| x.trim().parse().unwrap()).collect();
        let (costs, _) = run(v[0], v.get(3).copied().unwrap_or(0), v[1], v[2]);
        let bytes: u64 = costs.iter().map(|c| c.bytes).sum();
        println!("{{\"rounds\": {}, \"bytes\": {bytes}}}", costs.len());
        return;
    }
    println!(
        "| N | news / round | envelopes sent | bytes sent | entries verified | entries held | pairs behind after the last round |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut spreads = Vec::new();
    // N = 1,000 is slow to settle (its first rounds carry full envelopes to every target):
    // fewer rounds there.
    for (peers, warmup, measured) in [(20usize, 30usize, 10usize), (1000, 3, 2)] {
        for changes in [0usize, 1, 10] {
            if peers > 100 && changes == 1 {
                continue;
            }
            let (costs, behind) = run(peers, changes, warmup, measured);
            let per = |f: fn(&RoundCost) -> u64| {
                costs.iter().map(f).sum::<u64>() as f64 / (measured * peers) as f64
            };
            println!(
                "| {peers} | {changes} | {:.1} | {:.0} | {:.2} | {:.2} | {behind} |",
                per(|c| c.sent),
                per(|c| c.bytes),
                per(|c| c.verified),
                per(|c| c.held),
            );
        }
        // One piece of news in a settled, quiet mesh, three times: rounds until all hold it
        // (at N = 20; the spread simulation covers N = 1,000).
        if peers > 100 {
            continue;
        }
        let config = RoundsConfig::new(peers);
        let mut mesh = Mesh::new(config, 11);
        for _ in 0..warmup {
            mesh.round();
        }
        let rounds: Vec<String> = (0..3)
            .map(|_| mesh.spread(30).map_or("never".into(), |r| r.to_string()))
            .collect();
        spreads.push(format!("N = {peers}: {}", rounds.join(", ")));
    }
    println!(
        "\nRounds until every peer holds one piece of news (3 tries): {}",
        spreads.join("; ")
    );
}
