//! Headless Chromium driven over the DevTools protocol (a WebSocket; no WebDriver server), with
//! a fake microphone that plays a WAV file.

#![allow(dead_code)] // each test binary uses its own part of the harness

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One Chromium with one page; killed when dropped.
pub struct Browser {
    child: Child,
    socket: Socket,
    next_id: u64,
    _profile: tempfile::TempDir,
    /// Where screenshots go.
    pub shots: PathBuf,
    /// The messages of the dialogs (`confirm`, `alert`) the page opened; each was accepted.
    pub dialogs: Vec<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium whose microphone plays `microphone` (a WAV), screenshots going to `shots`.
    pub async fn launch(shots: PathBuf, microphone: &Path) -> Self {
        std::fs::create_dir_all(&shots).unwrap();
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            // Without these it waits on the network for updates and sync, which is closed here.
            .args([
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
            .arg(format!("--use-file-for-fake-audio-capture={}", microphone.display()))
            .args(["--autoplay-policy=no-user-gesture-required", "--window-size=1280,900"])
            .args(["--remote-debugging-port=0", "about:blank"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium runs (scripts/system-packages.txt installs it)");
        // Chromium writes the port it chose into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let mut port = None;
        for _ in 0..300 {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                port = text.lines().next().and_then(|l| l.parse::<u16>().ok());
                if port.is_some() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let port = port.expect("chromium opened its DevTools port within 15 s");
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut browser =
            Self { child, socket, next_id: 0, _profile: profile, shots, dialogs: Vec::new() };
        browser.call("Page.enable", json!({})).await;
        browser
    }

    /// Sends a DevTools command and returns its result; accepts any dialog met meanwhile (the
    /// command that opened it answers only once it is closed).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params).await.unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// As [`Browser::call`]; the protocol's error, if it answers one (e.g. a page that navigated
    /// away while it evaluated).
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.socket.send(Message::text(command.to_string())).await.unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("{method} got no answer within 60 s"))
                .expect("the DevTools socket is open")
                .unwrap();
            let Ok(text) = message.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
            if v["method"] == "Page.javascriptDialogOpening" {
                self.dialogs.push(v["params"]["message"].as_str().unwrap_or_default().to_owned());
                self.next_id += 1;
                let accept = json!({"id": self.next_id, "method": "Page.handleJavaScriptDialog",
                    "params": {"accept": true}});
                self.socket.send(Message::text(accept.to_string())).await.unwrap();
            }
        }
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, js: &str) -> Value {
        self.try_eval(js).await.unwrap_or_else(|e| panic!("{js}: {e}"))
    }

    /// Evaluates `js`; the exception it threw, or the protocol's error, if there was one.
    async fn try_eval(&mut self, js: &str) -> Result<Value, Value> {
        let params = json!({"expression": js, "awaitPromise": true, "returnByValue": true});
        let result = self.try_call("Runtime.evaluate", params).await?;
        match result.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Polls `js` until it is truthy (30 s at most); returns its value. While the page is
    /// between loads an element may be missing, or the page gone mid-evaluation: an exception or
    /// a protocol error counts as not yet.
    pub async fn wait_for(&mut self, js: &str) -> Value {
        for _ in 0..300 {
            let v = self.try_eval(js).await.unwrap_or_default();
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let page = self.eval("document.body ? document.body.innerText : ''").await;
        panic!("waited 30 s for `{js}`; the page reads:\n{}", page.as_str().unwrap_or_default());
    }

    /// Opens `url` and waits until it has loaded (after any redirect).
    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for("document.readyState === 'complete'").await;
    }

    /// Signs in to the dashboard at `base` with an API key; waits for the voice library.
    pub async fn sign_in(&mut self, base: &str, key: &str) {
        self.goto(&format!("{base}/sign-in")).await;
        self.fill("#api_key", key).await;
        self.click("#sign-in button").await;
        self.wait_for("location.pathname === '/voices' && document.readyState === 'complete'")
            .await;
    }

    /// The page's path.
    pub async fn path(&mut self) -> String {
        self.eval("location.pathname").await.as_str().unwrap().to_owned()
    }

    /// Sets the value of a form field and tells the page it changed.
    pub async fn fill(&mut self, selector: &str, value: &str) {
        let js = format!(
            "(() => {{ const el = document.querySelector({s}); el.value = {v}; \
             el.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()",
            s = json!(selector),
            v = json!(value)
        );
        self.eval(&js).await;
    }

    /// Clicks an element.
    pub async fn click(&mut self, selector: &str) {
        let js = format!("document.querySelector({}).click()", json!(selector));
        self.eval(&js).await;
    }

    /// Puts `file` in a file input.
    pub async fn set_file(&mut self, selector: &str, file: &Path) {
        let params = json!({"expression": format!("document.querySelector({})", json!(selector))});
        let object = self.call("Runtime.evaluate", params).await;
        let object_id = object["result"]["objectId"].clone();
        let files = json!({"files": [file.display().to_string()], "objectId": object_id});
        self.call("DOM.setFileInputFiles", files).await;
    }

    /// Shows the page as a `width` px wide screen.
    pub async fn width(&mut self, width: u32) {
        let params = json!({"width": width, "height": 900, "deviceScaleFactor": 1,
            "mobile": width < 600});
        self.call("Emulation.setDeviceMetricsOverride", params).await;
    }

    /// Saves the whole page as `<name>.png` in the screenshot folder.
    pub async fn screenshot(&mut self, name: &str) {
        let params = json!({"format": "png", "captureBeyondViewport": true});
        let shot = self.call("Page.captureScreenshot", params).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }
}
