//! The dashboard against a real proxy and real workers: its page and data routes, the live feed
//! (server-sent events) and how it ends on shutdown, and headless Chromium (Debian `chromium`)
//! using the page as an operator does: it signs in from the link `meshctl up` prints, connects
//! a pair with the Connect form, and sees the link row and the topology turn `up` without a
//! reload. The screenshot is left in target/artefacts/dashboard.png.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{Mesh, OPERATOR, READER};
use mesh_testkit::browser::{DevTools, artefacts_dir};
use serde_json::Value;

/// Reads server-sent events from `response` until one named `name` arrives; returns its data.
async fn next_event(stream: &mut reqwest::Response, buffer: &mut String, name: &str) -> Value {
    let read = async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event == name {
                    return serde_json::from_str(&data).unwrap();
                }
            }
            let chunk = stream.chunk().await.unwrap().expect("the feed ended");
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("no {name} event within 20 s"))
}

#[tokio::test]
async fn page_is_public_and_self_contained_and_its_data_needs_a_token() {
    let mesh = Mesh::new(&[]);
    let res = mesh
        .http
        .get(format!("{}/", mesh.proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"<script src="/dashboard.js""#));
    // Nothing from elsewhere: every src/href is local (or the empty data: icon).
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let url = part.split('"').next().unwrap();
            assert!(
                url.starts_with('/') || url.starts_with('#') || url == "data:,",
                "{url} is not local"
            );
        }
    }
    for asset in ["/dashboard.js", "/dashboard.css"] {
        let res = mesh
            .http
            .get(format!("{}{asset}", mesh.proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{asset}");
        // The SVG namespace is a name, not a request; no other URL may appear.
        let text = res.text().await.unwrap();
        let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !text.contains("http:") && !text.contains("https:") && !text.contains("//cdn"),
            "{asset} names a remote URL"
        );
    }

    for path in [
        "/api/mesh-rtc/summary",
        "/api/mesh-rtc/gossip",
        "/api/mesh-rtc/events",
    ] {
        let (status, body) = mesh.get(path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated");
    }
    let (status, body) = mesh.get("/api/mesh-rtc/gossip?limit=0", Some(READER)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_query");
    let (status, body) = mesh.get("/api/mesh-rtc/gossip?lmit=5", Some(READER)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = mesh.get("/api/mesh-rtc/gossip?limit=5", Some(READER)).await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 0);
    let (status, body) = mesh.get("/api/mesh-rtc/summary", Some(READER)).await;
    assert_eq!(status, 200);
    assert_eq!(body["peers"], 0);
    assert_eq!(body["links"]["up"], 0);
    assert!(body.get("lastRun").is_none());
}

#[tokio::test]
async fn the_feed_sends_the_overview_then_each_change_and_ends_when_the_proxy_stops() {
    let mut mesh = Mesh::new(&[("MESH_LIVE_INTERVAL_MS", "250")]);
    let a = mesh.worker("feed-a", 71);
    let b = mesh.worker("feed-b", 72);
    let res = mesh
        .http
        .get(format!("{}/api/mesh-rtc/events", mesh.proxy.url))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut stream = res;
    let mut buffer = String::new();
    let first = next_event(&mut stream, &mut buffer, "overview").await;
    assert_eq!(first["summary"]["peers"], 2, "{first}");
    assert_eq!(first["links"].as_array().unwrap().len(), 0);

    // A change another process makes (the workers write the link) reaches the open feed.
    let (status, link) = mesh
        .post(
            "/api/mesh-rtc/connect",
            Some(OPERATOR),
            &serde_json::json!({ "a": "feed-a", "b": "feed-b" }),
        )
        .await;
    assert_eq!(status, 200, "{link}");
    let pushed = loop {
        let o = next_event(&mut stream, &mut buffer, "overview").await;
        if o["summary"]["links"]["up"] == 1 {
            break o;
        }
    };
    assert_eq!(pushed["links"][0]["id"], link["id"]);
    assert_eq!(pushed["links"][0]["health"], "up");

    // Stopping the proxy ends the feed cleanly (a finished response, not a reset connection
    // after the grace period).
    drop((a, b));
    let status = mesh.proxy.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", mesh.proxy.log());
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut results = Vec::new();
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => results.push(Ok(())),
                Ok(None) => break,
                Err(e) => {
                    results.push(Err(e));
                    break;
                }
            }
        }
        results
    })
    .await
    .expect("the feed did not end");
    assert!(
        rest.iter().all(Result::is_ok),
        "the feed ended with an error: {rest:?}"
    );
}

#[tokio::test]
async fn chromium_connects_a_pair_from_the_dashboard_and_sees_it_come_up_live() {
    let mesh = Mesh::new(&[("MESH_LIVE_INTERVAL_MS", "250")]);
    let send_root = mesh.dir.path().display().to_string();
    let _workers = [
        mesh.worker_with("dash-a", 81, &[("MESH_SEND_ROOT", send_root.as_str())]),
        mesh.worker("dash-b", 82),
        mesh.worker("dash-c", 83),
    ];
    let mut page = DevTools::start(1280, 1400).await;
    page.watch_network().await;
    // The link `meshctl up` prints: the token rides in the fragment, which never leaves the
    // browser.
    page.navigate(&format!("{}/#token={OPERATOR}", mesh.proxy.url))
        .await;
    page.wait_for(
        "document.querySelectorAll('#peers tbody tr').length === 3 \
         && document.getElementById('feed').dataset.state === 'live'",
        Duration::from_secs(30),
        "the peers table to list three peers over a live feed",
    )
    .await;
    assert_eq!(
        page.eval("location.hash").await,
        "",
        "the token is dropped from the address bar"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#topology .node').length")
            .await,
        3
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#links tbody tr').length")
            .await,
        0
    );
    // Marks this page load: a reload would lose it.
    page.eval("window.sameLoad = 'yes'").await;

    page.eval(
        "document.getElementById('connect-a').value = 'dash-a'; \
         document.getElementById('connect-b').value = 'dash-c'; true",
    )
    .await;
    page.click("#connect-button").await;
    let result = page
        .wait_for(
            "document.getElementById('connect-result').dataset.outcome \
             && document.getElementById('connect-result').textContent",
            Duration::from_secs(30),
            "the inline result of Connect",
        )
        .await;
    assert_eq!(
        page.eval("document.getElementById('connect-result').dataset.outcome")
            .await,
        "ok",
        "{result}"
    );
    assert!(
        result.as_str().unwrap().contains("dash-a ↔ dash-c is up"),
        "{result}"
    );
    let link = "dash-a<->dash-c";
    page.wait_for(
        &format!(
            "document.querySelector('#links tr[data-link=\"{link}\"]')?.dataset.health === 'up' \
             && document.querySelector('#topology line[data-link=\"{link}\"]')?.dataset.health === 'up'"
        ),
        Duration::from_secs(30),
        "the link row and the topology edge to show the link up",
    )
    .await;
    assert_eq!(
        page.eval(&format!(
            "document.querySelector('#links tr[data-link=\"{link}\"] .health').textContent"
        ))
        .await,
        "up"
    );
    assert_eq!(
        page.eval("window.sameLoad").await,
        "yes",
        "the page was not reloaded"
    );

    // Let the QoS figures arrive before the picture is taken (the worker samples every second).
    page.wait_for(
        &format!(
            "!document.querySelector('#links tr[data-link=\"{link}\"] td:nth-child(3)').textContent.includes('–')"
        ),
        Duration::from_secs(30),
        "an RTT figure in the link row",
    )
    .await;
    // A file sent over the new link shows in the transfers table, with its progress bar full.
    let file = mesh.dir.path().join("snapshot.tar");
    std::fs::write(&file, vec![7u8; 5 << 20]).unwrap();
    let (status, started) = mesh
        .post(
            "/api/mesh-rtc/transfers",
            Some(OPERATOR),
            &serde_json::json!({"from": "dash-a", "to": "dash-c", "path": file}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap();
    page.wait_for(
        &format!(
            "document.querySelector('#transfers tr[data-transfer=\"{id}\"]')?.dataset.state === 'complete' \
             && document.querySelector('#transfers tr[data-transfer=\"{id}\"] progress').value === 100"
        ),
        Duration::from_secs(30),
        "the finished transfer in the transfers table",
    )
    .await;
    let shot = artefacts_dir().join("dashboard.png");
    page.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    // A failure is shown inline with the step that failed: the pair is already connected.
    page.click("#connect-button").await;
    let failed = page
        .wait_for(
            "document.getElementById('connect-result').dataset.outcome === 'failed' \
             && document.getElementById('connect-result').textContent",
            Duration::from_secs(30),
            "the inline failure of a second Connect",
        )
        .await;
    let failed = failed.as_str().unwrap();
    assert!(
        failed.contains("dial") && failed.contains("link_exists"),
        "{failed}"
    );

    // Every request the page made went to the proxy.
    let origin = format!("{}/", mesh.proxy.url);
    assert!(!page.requests.is_empty());
    for url in &page.requests {
        assert!(
            url.starts_with(&origin) || url.starts_with("data:"),
            "the page requested {url}"
        );
    }
}
