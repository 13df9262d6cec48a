//! The file-transfer benchmark, run by `scripts/bench.sh files`: a 256 MiB file between two real
//! worker processes (release build, loopback), against the worker's raw DataChannel throughput
//! (the same transport settings, in one process, no files, no hashing) and Chromium's libwebrtc
//! DataChannel measured in the same run. Chromium runs first and alone. JSON on stdout.
//!
//! File throughput is end to end: from `POST /transfers` to the sender's `complete`, so it
//! includes hashing the file for the manifest, every chunk check on both sides, the writes and
//! the receiver's whole-file check before the rename. "Wire" throughput is from the receiver's
//! accept to `complete`. Peak memory is each worker process's VmHWM after the runs; one 2 GiB
//! file (4 MiB chunks) between two other workers shows it does not follow the chunk size. CPU seconds
//! (user and system, all threads) are reported for each end of a transfer and of the raw
//! two-process run: on two cores they say how much of the machine each costs.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)] // A driver that reports.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use mesh_testkit::workers::Mesh;
use serde_json::{Value, json};
use webrtc_worker::transport::{
    Channel, ConnEvent, DEFAULT_RECEIVE_WINDOW, Transport, TransportConfig,
};

const FILE_BYTES: u64 = 256 << 20;
/// A file whose chunks are four times as large (4 MiB): peak memory should not follow.
const BIG_FILE_BYTES: u64 = 2 << 30;
const CHROMIUM_BYTES: usize = 64 << 20;
const RUNS: usize = 3;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU time (user and system, all threads) process `pid` has used, in seconds.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which may hold spaces: utime and stime are the 12th and
    // 13th, in clock ticks (USER_HZ, 100 on Linux).
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// The worker's defaults: 1 MiB send buffer, 256 KiB receive window (or
/// `MESH_RECEIVE_WINDOW_BYTES`).
fn transport() -> Transport {
    Transport::new(TransportConfig {
        ice_servers: vec![],
        relay_only: false,
        udp_addrs: vec!["127.0.0.1:0".parse().unwrap()],
        gather_timeout: Duration::from_secs(5),
        prompt_driver: true,
        send_buffer_limit: 1 << 20,
        // As the worker reads it, so another window can be compared on both sides.
        receive_window: std::env::var("MESH_RECEIVE_WINDOW_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_RECEIVE_WINDOW),
    })
}

/// MB/s of `total` bytes in 64 KiB messages over a worker transport's `file` channel.
async fn raw_datachannel(total: usize) -> f64 {
    let t = transport();
    let (a, a_rx) = t.connect().await.unwrap();
    let (b, b_rx) = t.connect().await.unwrap();
    let offer = a.offer().await.unwrap();
    let answer = b.answer(&offer).await.unwrap();
    a.accept_answer(&answer).await.unwrap();
    tokio::join!(file_channel_open(a_rx), file_channel_open(b_rx));
    let mut queue = b.take_file_queue().unwrap();
    let receiver = tokio::spawn(async move {
        let mut got = 0;
        while got < total {
            match queue.recv().await {
                Some(m) => got += m.len(),
                None => break,
            }
        }
        got
    });
    let (mbps, ()) = send_all(&a, total, async { (receiver.await.unwrap(), ()) }).await;
    a.close().await;
    b.close().await;
    mbps
}

/// Sends `total` bytes in 64 KiB messages on `a`'s `file` channel as fast as its send buffer
/// allows; MB/s until `received` (the receiving side's count, and what else it reports) says all
/// arrived.
async fn send_all<T>(
    a: &webrtc_worker::transport::Connection,
    total: usize,
    received: impl std::future::Future<Output = (usize, T)>,
) -> (f64, T) {
    let msg = vec![7u8; 65536];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < total {
        a.send(Channel::File, &msg, false).await.unwrap();
        sent += msg.len();
    }
    let (got, report) = received.await;
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(got, total, "every byte arrives");
    (total as f64 / secs / 1e6, report)
}

fn vm_hwm_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kb / 1024.0
}

/// `runs` transfers of one file of `bytes` between two new worker processes.
async fn files(bytes: u64, runs: usize) -> Value {
    let mesh = Mesh::new();
    let outbox = mesh.dir.path().join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(outbox.join("bench.bin")).unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..(bytes >> 20) {
            for w in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).unwrap();
        }
        f.flush().unwrap();
    }
    let root = outbox.display().to_string();
    // QoS as in production (15 s), probes every 500 ms.
    let env = [
        ("MESH_SEND_ROOT", root.as_str()),
        ("QOS_INTERVAL_SECS", "15"),
        ("MESH_PROBE_INTERVAL_MS", "500"),
    ];
    let a = mesh.worker("bench-a", 1, &env);
    let b = mesh.worker("bench-b", 2, &env);
    mesh.connect(&a, &b).await;
    mesh.wait_up(&a, &b).await;
    let (mut total, mut wire) = (Vec::new(), Vec::new());
    let (mut sender_cpu, mut receiver_cpu) = (Vec::new(), Vec::new());
    let (a_pid, b_pid) = (a.proc.pid().to_string(), b.proc.pid().to_string());
    for _ in 0..runs {
        let (a0, b0) = (cpu_secs(&a_pid), cpu_secs(&b_pid));
        let t0 = Instant::now();
        let (s, started) = mesh
            .post(
                &a,
                "/transfers",
                &json!({"to": "bench-b", "path": "bench.bin"}),
            )
            .await;
        assert_eq!(s, 202, "{started}");
        let id = started["id"].as_str().unwrap().to_string();
        let mut accepted: Option<Instant> = None;
        loop {
            let v = mesh.get(&a, &format!("/transfers/{id}")).await;
            if accepted.is_none() && (v["state"] == "sending" || v["state"] == "complete") {
                accepted = Some(Instant::now());
            }
            if v["state"] == "complete" {
                break;
            }
            assert!(
                !["failed", "refused", "cancelled"].contains(&v["state"].as_str().unwrap()),
                "{v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let end = Instant::now();
        sender_cpu.push(cpu_secs(&a_pid) - a0);
        receiver_cpu.push(cpu_secs(&b_pid) - b0);
        total.push(bytes as f64 / (end - t0).as_secs_f64() / 1e6);
        wire.push(bytes as f64 / (end - accepted.unwrap()).as_secs_f64() / 1e6);
    }
    json!({
        "fileMB": bytes >> 20,
        "chunkMB": mesh_types::transfer::chunk_size_for(bytes).unwrap() >> 20,
        "endToEndMBps": median(&total),
        "endToEndRunsMBps": total,
        "wireMBps": median(&wire),
        "wireRunsMBps": wire,
        "senderCpuSeconds": median(&sender_cpu),
        "receiverCpuSeconds": median(&receiver_cpu),
        "senderPeakRssMB": vm_hwm_mb(a.proc.pid()),
        "receiverPeakRssMB": vm_hwm_mb(b.proc.pid()),
    })
}

/// Waits for a connection's `file` channel to open, keeping its other events drained after.
async fn file_channel_open(mut rx: tokio::sync::mpsc::Receiver<ConnEvent>) {
    loop {
        if let Some(ConnEvent::Open(Channel::File)) = rx.recv().await {
            break;
        }
    }
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
}

/// The receiving side of [`raw_two_processes`], in a process of its own: the offer on stdin,
/// the answer on stdout, then `total` bytes on the `file` channel, then a line when they are in.
async fn raw_peer(total: usize) {
    use std::io::{BufRead, Write};
    let offer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let (b, b_rx) = transport().connect().await.unwrap();
    let answer = b
        .answer(&serde_json::from_str::<String>(&offer).unwrap())
        .await
        .unwrap();
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes()).unwrap();
        out.flush().unwrap();
    };
    say(format!("{}\n", json!(answer)));
    file_channel_open(b_rx).await;
    let mut queue = b.take_file_queue().unwrap();
    let (mut got, cpu0) = (0, cpu_secs("self"));
    while got < total {
        got += queue.recv().await.unwrap().len();
    }
    say(format!("{got} {}\n", cpu_secs("self") - cpu0));
}

/// MB/s of `total` bytes on the `file` channel between this process and a child process (the
/// worker's raw DataChannel as two workers would use it, each end on its own process), and the
/// CPU seconds each end used meanwhile.
async fn raw_two_processes(total: usize) -> (f64, f64, f64) {
    use std::io::{BufRead, Write};
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--bench")
        .env("MESH_BENCH_RAW_PEER", total.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (a, a_rx) = transport().connect().await.unwrap();
    let offer = a.offer().await.unwrap();
    writeln!(stdin, "{}", json!(offer)).unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (serde_json::from_str::<String>(&line).unwrap(), stdout)
    });
    let (answer, mut stdout) = answer.await.unwrap();
    a.accept_answer(&answer).await.unwrap();
    file_channel_open(a_rx).await;
    let done = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let (got, cpu) = line.trim().split_once(' ').unwrap();
        (got.parse::<usize>().unwrap(), cpu.parse::<f64>().unwrap())
    });
    let cpu0 = cpu_secs("self");
    let (mbps, receiver_cpu) = send_all(&a, total, async { done.await.unwrap() }).await;
    let sender_cpu = cpu_secs("self") - cpu0;
    a.close().await;
    let _ = child.wait();
    (mbps, sender_cpu, receiver_cpu)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(total) = std::env::var("MESH_BENCH_RAW_PEER") {
        mesh_service::install_crypto_provider();
        return raw_peer(total.parse().unwrap()).await;
    }
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    mesh_service::install_crypto_provider();
    // `MESH_BENCH_PHASE=raw`: the raw DataChannel figures only (for quick checks).
    if std::env::var("MESH_BENCH_PHASE").as_deref() == Ok("raw") {
        let one = raw_datachannel(FILE_BYTES as usize).await;
        let (two, sender_cpu, receiver_cpu) = raw_two_processes(FILE_BYTES as usize).await;
        println!(
            "{}",
            json!({"oneProcessMBps": one, "twoProcessesMBps": two,
                "senderCpuSeconds": sender_cpu, "receiverCpuSeconds": receiver_cpu})
        );
        return;
    }
    // `MESH_BENCH_PHASE=files`: the file transfers only (for quick checks).
    if std::env::var("MESH_BENCH_PHASE").as_deref() == Ok("files") {
        println!(
            "{}",
            serde_json::to_string_pretty(&files(FILE_BYTES, RUNS).await).unwrap()
        );
        return;
    }
    let chromium = common::chromium(&format!("setups=1&bytes={CHROMIUM_BYTES}")).await;
    let chromium_mbps = chromium["throughputMBps"]["65536"].as_f64().unwrap();
    let mut raw = Vec::new();
    let (mut raw2, mut raw2_sender_cpu, mut raw2_receiver_cpu) =
        (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        raw.push(raw_datachannel(FILE_BYTES as usize).await);
        let (mbps, sender_cpu, receiver_cpu) = raw_two_processes(FILE_BYTES as usize).await;
        raw2.push(mbps);
        raw2_sender_cpu.push(sender_cpu);
        raw2_receiver_cpu.push(receiver_cpu);
    }
    let raw_mbps = median(&raw);
    let raw2_mbps = median(&raw2);
    let file = files(FILE_BYTES, RUNS).await;
    let big_file = files(BIG_FILE_BYTES, 1).await;
    let file_mbps = file["endToEndMBps"].as_f64().unwrap();
    let report = json!({
        "chromium": {
            "userAgent": chromium["userAgent"],
            "datachannelMBps": chromium_mbps,
            "runsMBps": chromium["throughputRunsMBps"]["65536"],
            "bytes": CHROMIUM_BYTES,
        },
        "workerRawDatachannel": {
            "oneProcessMBps": raw_mbps,
            "oneProcessRunsMBps": raw,
            "twoProcessesMBps": raw2_mbps,
            "twoProcessesRunsMBps": raw2,
            "twoProcessesSenderCpuSeconds": median(&raw2_sender_cpu),
            "twoProcessesReceiverCpuSeconds": median(&raw2_receiver_cpu),
            "bytes": FILE_BYTES,
        },
        "files": file,
        "bigFile": big_file,
        "ratios": {
            "fileVsChromium": file_mbps / chromium_mbps,
            "fileVsRawTwoProcesses": file_mbps / raw2_mbps,
            "fileVsRawOneProcess": file_mbps / raw_mbps,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
