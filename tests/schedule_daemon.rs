//! The memory scheduler in the running daemon (docs/scheduler.md): real
//! daemon, real llama-server, tiny models and a small declared budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, pretty};

const MIB: u64 = 1 << 20;

/// A `memory:` block and on-demand models of `footprint` each.
fn budgeted(d: &Daemon, ram_mib: u64, fairness: &str, models: &[(&str, u64)]) -> String {
    let mut body = String::new();
    for (m, footprint) in models {
        body.push_str(&format!(
            "  {m}:\n    model: {m}.gguf\n    on_demand: true\n    memory: {footprint}MiB\n"
        ));
    }
    d.spec_text(&body).replace(
        "models:\n",
        &format!(
            "memory:\n  ram: {{ total: {ram_mib}MiB, reserve: 0B }}\n  fairness: {fairness}\nmodels:\n"
        ),
    )
}

#[test]
fn three_on_demand_models_any_two_fit_share_the_budget_without_a_failed_request() {
    let Some(d) = Daemon::start(&["a", "b", "c"], "") else {
        return;
    };
    common::daemon::write_by_rename(
        &d.spec,
        &budgeted(&d, 100, "1s", &[("a", 40), ("b", 40), ("c", 40)]),
    );
    d.wait_status("the budget applied", |s| {
        s.scheduler
            .devices
            .iter()
            .any(|b| b.device == "CPU" && b.budget_bytes == 100 * MIB)
            && s.models.len() == 3
    });

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
            let listen = d.listen.clone();
            let spec = d.spec.clone();
            std::thread::spawn(move || {
                // A view of the daemon for this thread: only the endpoint.
                let models = ["a", "b", "c"];
                let mut n = i;
                while !stop.load(Ordering::SeqCst) {
                    let model = models[n % 3];
                    n += 1 + i % 2;
                    let line = chat_at(&listen, model);
                    if line.contains(" 200 ") {
                        served.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{model}: {line} ({})", spec.display()));
                    }
                }
            })
        })
        .collect();

    // Sample the ledger and the processes really running while they work.
    let until = Instant::now() + Duration::from_secs(25);
    let (mut samples, mut most_running, mut most_reserved) = (0, 0, 0u64);
    while Instant::now() < until {
        let s = d.status();
        let running = d.children();
        let cpu = s
            .scheduler
            .devices
            .iter()
            .find(|b| b.device == "CPU")
            .cloned()
            .expect("a CPU budget");
        assert!(
            cpu.reserved_bytes <= cpu.budget_bytes,
            "reserved {} over the budget {}: {}",
            cpu.reserved_bytes,
            cpu.budget_bytes,
            pretty(&s)
        );
        // Every running llama-server is covered by a reservation: at most
        // two of 40 MiB fit in 100 MiB.
        assert!(
            running.len() <= 2,
            "{} running: {}",
            running.len(),
            pretty(&s)
        );
        most_running = most_running.max(running.len());
        most_reserved = most_reserved.max(cpu.reserved_bytes);
        samples += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let s = d.status();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "failed requests: {failures:?}\n{}",
        d.log()
    );
    let served = served.load(Ordering::SeqCst);
    assert!(served > 30, "only {served} requests served");
    assert_eq!(most_running, 2, "two models ran at once at some point");
    assert_eq!(most_reserved, 80 * MIB);
    let c = s.scheduler.counters;
    assert!(
        c.swaps > 0 && c.waits > 0,
        "the third model had to wait for room: {c:?}"
    );
    assert_eq!(c.refused, 0);
    for m in ["a", "b", "c"] {
        assert_eq!(s.models[m].cut, 0, "{m} cut a request");
    }
    eprintln!("{served} requests in 25 s over {samples} samples; counters {c:?}");
}

fn chat_at(listen: &str, model: &str) -> String {
    use std::io::Write;
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":8}}"#
    );
    let Ok(mut c) = std::net::TcpStream::connect(listen) else {
        return "cannot connect".into();
    };
    let _ = write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    if answer.contains(" 200 ") {
        answer.lines().next().unwrap_or("").to_owned()
    } else {
        answer
    }
}
