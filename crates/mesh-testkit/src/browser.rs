//! Headless Chromium (Debian package `chromium`) as a real browser peer: it loads a page and
//! runs until dropped. Flags follow what works on this closed network: no background
//! networking, no component updates, a fresh profile, no sandbox (tests run as root).

use std::process::{Child, Command, Stdio};

#[derive(Debug)]
pub struct Chromium {
    child: Child,
    profile: tempfile::TempDir,
}

impl Chromium {
    /// Opens `url` in a new headless Chromium; extra flags are appended.
    pub fn open(url: &str, extra_flags: &[&str]) -> Self {
        let profile = tempfile::tempdir().unwrap();
        // `MESH_CHROMIUM` names another Chromium build (CI images without Debian's package).
        let binary = std::env::var("MESH_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--mute-audio",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra_flags)
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} (Debian package chromium, or set MESH_CHROMIUM): {e}")
            });
        Chromium { child, profile }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Test bytes the interop pages know how to check: byte `i` is `(i * 7 + seed) % 251` (the
/// pages' `pattern`/`matches` compute the same).
pub fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

/// A Chromium that tests drive over the DevTools protocol: navigate, run script in the page,
/// click like a user (real mouse events at an element's centre), watch network requests and
/// take screenshots.
#[derive(Debug)]
pub struct DevTools {
    _browser: Chromium,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    /// URLs of every request the page made since [`DevTools::watch_network`].
    pub requests: Vec<String>,
}

impl DevTools {
    /// Starts a headless Chromium on a blank page (`width`×`height`) and attaches to that page.
    pub async fn start(width: u32, height: u32) -> Self {
        let size = format!("--window-size={width},{height}");
        let browser = Chromium::open(
            "about:blank",
            &["--remote-debugging-port=0", "--hide-scrollbars", &size],
        );
        // Chromium writes the port it chose into the profile once it listens.
        let port_file = browser.profile.path().join("DevToolsActivePort");
        let port: u16 = crate::process::eventually(
            std::time::Duration::from_secs(30),
            "Chromium's DevTools port",
            || {
                let text = std::fs::read_to_string(&port_file).ok();
                async move { text.and_then(|t| t.lines().next()?.trim().parse().ok()) }
            },
        )
        .await;
        let list_url = format!("http://127.0.0.1:{port}/json/list");
        let ws_url: String = crate::process::eventually(
            std::time::Duration::from_secs(30),
            "Chromium's page target",
            || {
                let list_url = list_url.clone();
                async move {
                    let targets: serde_json::Value =
                        reqwest::get(&list_url).await.ok()?.json().await.ok()?;
                    targets
                        .as_array()?
                        .iter()
                        .find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                        .as_str()
                        .map(str::to_string)
                }
            },
        )
        .await;
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("attaching to Chromium's page at {ws_url}: {e}"));
        DevTools {
            _browser: browser,
            ws,
            next_id: 1,
            requests: Vec::new(),
        }
    }

    /// Calls `method` and returns its result; panics on a protocol error.
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        match self.try_call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{method} failed: {e}"),
        }
    }

    /// Calls `method`: its result, or the protocol error (e.g. the page was navigating).
    pub async fn try_call(
        &mut self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, serde_json::Value> {
        use futures_util::{SinkExt as _, StreamExt as _};
        let id = self.next_id;
        self.next_id += 1;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(
                msg.to_string(),
            ))
            .await
            .unwrap_or_else(|e| panic!("sending {method} to Chromium: {e}"));
        let answer = async {
            while let Some(frame) = self.ws.next().await {
                let frame = frame.unwrap_or_else(|e| panic!("reading from Chromium: {e}"));
                let Ok(text) = frame.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                    continue;
                };
                if v["method"] == "Network.requestWillBeSent"
                    && let Some(url) = v["params"]["request"]["url"].as_str()
                {
                    self.requests.push(url.to_string());
                }
                if v["id"] == id {
                    return v;
                }
            }
            panic!("Chromium closed the DevTools connection during {method}");
        };
        let v = tokio::time::timeout(std::time::Duration::from_secs(30), answer)
            .await
            .unwrap_or_else(|_| panic!("Chromium did not answer {method} within 30 s"));
        if !v["error"].is_null() {
            return Err(v["error"].clone());
        }
        Ok(v["result"].clone())
    }

    /// Records every request the page makes from now on in [`DevTools::requests`].
    pub async fn watch_network(&mut self) {
        self.call("Network.enable", serde_json::json!({})).await;
    }

    /// Opens `url` in the page.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({ "url": url }))
            .await;
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value; panics if
    /// it throws.
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({
                    "expression": expression, "returnByValue": true, "awaitPromise": true
                }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page, and returns its value.
    pub async fn wait_for(
        &mut self,
        expression: &str,
        within: std::time::Duration,
        what: &str,
    ) -> serde_json::Value {
        let poll = async {
            loop {
                // A page that is still loading may have no context to evaluate in yet: not yet.
                let v = self
                    .try_call(
                        "Runtime.evaluate",
                        serde_json::json!({
                            "expression": format!(
                                "(() => {{ try {{ return {expression}; }} catch (_) {{ return null; }} }})()"
                            ),
                            "returnByValue": true,
                        }),
                    )
                    .await
                    .map(|r| r["result"]["value"].clone())
                    .unwrap_or(serde_json::Value::Null);
                let truthy = match &v {
                    serde_json::Value::Null => false,
                    serde_json::Value::Bool(b) => *b,
                    serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
                    serde_json::Value::String(s) => !s.is_empty(),
                    _ => true,
                };
                if truthy {
                    return v;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(within, poll)
            .await
            .unwrap_or_else(|_| {
                panic!("timed out after {within:?} waiting for {what} ({expression})")
            })
    }

    /// Clicks the element `selector` names as a user would: it is scrolled into view and gets a
    /// mouse press and release at its centre.
    pub async fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let rect = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()"
            ))
            .await;
        assert!(!rect.is_null(), "no element {selector} to click");
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                serde_json::json!({
                    "type": kind, "x": rect["x"], "y": rect["y"], "button": "left", "clickCount": 1
                }),
            )
            .await;
        }
    }

    /// Saves a PNG of the whole page to `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine as _;
        let shot = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

/// Where tests leave artefacts (screenshots) for people to look at: `MESH_ARTEFACTS_DIR`, else
/// `target/artefacts` of the workspace.
pub fn artefacts_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("MESH_ARTEFACTS_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/artefacts
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("artefacts"))
        .unwrap_or_else(|| "artefacts".into())
}
