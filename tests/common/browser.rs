//! A small WebDriver client (W3C protocol over `reqwest`) driving Debian's
//! headless Chromium through its own chromedriver, for the console's browser
//! tests. Each `Browser` has its own chromedriver, port and fresh profile; a
//! screenshot per step goes to `target/test-output/console/<test>/`.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the browser tests cannot run here (chromium or chromedriver missing), if so.
pub fn unavailable() -> Option<String> {
    for bin in ["chromium", "chromedriver"] {
        if Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| !s.success()).unwrap_or(true) {
            return Some(format!("{bin} is not installed (run ops/chromium.sh)"));
        }
    }
    None
}

/// axe-core, fetched and checked by ops/axe-core.sh.
pub fn axe_source() -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/axe-core.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("ops/axe-core.sh runs");
    assert!(out.status.success(), "ops/axe-core.sh failed (npm registry reachable?)");
    let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: PathBuf,
    pub out_dir: PathBuf,
    step: usize,
}

impl Browser {
    /// Start chromedriver and a headless Chromium with a fresh profile.
    pub async fn start(test: &str) -> Browser {
        let port = super::spine::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        let t0 = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("lv-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(std::iter::once(format!("--user-data-dir={}", profile.display())))
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
            "goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"}
        }}});
        let resp: Value = http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = resp["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {resp}")).to_owned();
        let out_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-output/console")).join(test);
        let _ = std::fs::remove_dir_all(&out_dir);
        std::fs::create_dir_all(&out_dir).unwrap();
        let b = Browser { driver, base, session, http, profile, out_dir, step: 0 };
        b.cmd("POST", "goog/cdp/execute", json!({"cmd": "Network.enable", "params": {}})).await;
        b
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_cmd(method, path, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A WebDriver command; `Err` names the driver's error (e.g. a stale element reference).
    async fn try_cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let v: Value = req.send().await.expect("webdriver request").json().await.expect("webdriver JSON");
        match v["value"]["error"].as_str() {
            Some(e) => Err(format!("webdriver {method} {path}: {e}: {}", v["value"]["message"])),
            None => Ok(v["value"].clone()),
        }
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "url", json!({"url": url})).await;
    }

    pub async fn source(&self) -> String {
        self.cmd("GET", "source", Value::Null).await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn title(&self) -> String {
        self.cmd("GET", "title", Value::Null).await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "execute/sync", json!({"script": script, "args": args})).await
    }

    pub async fn js_async(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "execute/async", json!({"script": script, "args": args})).await
    }

    /// The element matching `css`, if any.
    pub async fn find(&self, css: &str) -> Option<String> {
        let url = format!("{}/session/{}/element", self.base, self.session);
        let v: Value =
            self.http.post(url).json(&json!({"using": "css selector", "value": css})).send().await.unwrap().json().await.unwrap();
        // The W3C element reference: an object with one key (the web element identifier).
        v["value"]
            .as_object()
            .filter(|o| !o.contains_key("error"))
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    pub async fn el(&self, css: &str) -> String {
        self.find(css).await.unwrap_or_else(|| panic!("no element {css}"))
    }

    /// The visible text of `css`.
    pub async fn text(&self, css: &str) -> String {
        let id = self.el(css).await;
        self.cmd("GET", &format!("element/{id}/text"), Value::Null).await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let id = self.find(css).await?;
        self.cmd("GET", &format!("element/{id}/attribute/{name}"), Value::Null).await.as_str().map(str::to_owned)
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.el(css).await;
        self.cmd("POST", &format!("element/{id}/clear"), json!({})).await;
        self.cmd("POST", &format!("element/{id}/value"), json!({"text": text})).await;
    }

    /// Type each `(css, text)` into its field, then click `submit`: a form sent as a person would.
    pub async fn submit_form(&self, fields: &[(&str, &str)], submit: &str) {
        for (css, text) in fields {
            self.type_into(css, text).await;
        }
        self.click(submit).await;
    }

    pub async fn select(&self, css: &str, value: &str) {
        self.js(
            "const s = document.querySelector(arguments[0]); s.value = arguments[1]; s.dispatchEvent(new Event('change'));",
            json!([css, value]),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let id = self.el(css).await;
        self.cmd("POST", &format!("element/{id}/click"), json!({})).await;
    }

    /// Wait until `css`'s text contains `needle` (or panic after `timeout`).
    pub async fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            // The page may replace the element between finding it and reading it (a stale
            // reference): that is a page still changing, so look again.
            if let Some(id) = self.find(css).await {
                if let Ok(t) = self.try_cmd("GET", &format!("element/{id}/text"), Value::Null).await {
                    let t = t.as_str().unwrap_or_default().to_owned();
                    if t.contains(needle) {
                        return t;
                    }
                }
            }
            assert!(
                t0.elapsed() < timeout,
                "{css} never showed {needle:?}; page: {}",
                self.source().await.chars().take(3000).collect::<String>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Save a PNG screenshot named after the step.
    pub async fn shot(&mut self, name: &str) -> PathBuf {
        self.step += 1;
        let b64 = self.cmd("GET", "screenshot", Value::Null).await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        let path = self.out_dir.join(format!("{:02}-{name}.png", self.step));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Run axe-core in the page; the serious or critical violations (id: help, nodes).
    pub async fn axe(&self, axe: &str) -> Vec<String> {
        self.js(axe, json!([])).await;
        let r = self
            .js_async(
                "const done = arguments[arguments.length - 1]; axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations)).catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));",
                json!([]),
            )
            .await;
        r.as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .map(|v| {
                format!("{}: {} ({} nodes: {})", v["id"], v["help"], v["nodes"].as_array().map_or(0, |n| n.len()), v["nodes"][0]["html"])
            })
            .collect()
    }

    /// Every response body the page received so far (documents, fetches) and
    /// every Server-Sent Event message, from the browser's own network log.
    pub async fn received(&self) -> Vec<(String, String)> {
        let log = self.cmd("POST", "se/log", json!({"type": "performance"})).await;
        let mut out = Vec::new();
        for entry in log.as_array().cloned().unwrap_or_default() {
            let msg: Value = serde_json::from_str(entry["message"].as_str().unwrap_or("{}")).unwrap_or_default();
            let m = &msg["message"];
            match m["method"].as_str() {
                Some("Network.eventSourceMessageReceived") => {
                    out.push((format!("sse:{}", m["params"]["eventName"]), m["params"]["data"].as_str().unwrap_or_default().to_owned()))
                }
                Some("Network.loadingFinished") => {
                    let id = m["params"]["requestId"].clone();
                    let url = format!("{}/session/{}/goog/cdp/execute", self.base, self.session);
                    let v: Value = self
                        .http
                        .post(url)
                        .json(&json!({"cmd": "Network.getResponseBody", "params": {"requestId": id}}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap_or_default();
                    if let Some(body) = v["value"]["body"].as_str() {
                        let body = if v["value"]["base64Encoded"].as_bool() == Some(true) {
                            use base64::Engine;
                            String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(body).unwrap_or_default())
                                .into_owned()
                        } else {
                            body.to_owned()
                        };
                        out.push((format!("body:{id}"), body));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The browser's cookies (name, value, httpOnly, sameSite).
    pub async fn cookies(&self) -> Vec<Value> {
        self.cmd("GET", "cookie", Value::Null).await.as_array().cloned().unwrap_or_default()
    }

    pub async fn quit(mut self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        self.reap();
        let _ = std::fs::remove_dir_all(&self.profile);
    }

    /// Chromium's helpers (zygotes, utility processes) outlive the browser and its
    /// driver: end every process of this browser's own profile, by PID.
    fn reap(&self) {
        let marker = format!("--user-data-dir={}", self.profile.display());
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
            if cmd.split(|b| *b == 0).any(|arg| arg == marker.as_bytes()) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        self.reap();
    }
}
