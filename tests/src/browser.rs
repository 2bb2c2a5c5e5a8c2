//! Headless Chromium (Debian's `chromium`) as the test's browser: a page's DOM after its
//! scripts ran, and a screenshot. This machine has no network, so everything that would
//! reach out is off and each run has a fresh profile.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Chromium on `page` with `args`, headless, within 60 s.
pub fn chromium(args: &[&str], page: &Path) -> Output {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium (cargo xtask test installs Debian's chromium)");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("waiting for chromium").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("chromium output");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Renders a copy of `page` with `script` appended, which must put one JSON value in a
/// `<pre id="check">`; returns that value (what the browser measured).
pub fn rendered(page: &Path, script: &str) -> serde_json::Value {
    let checked = page.with_file_name("checked.html");
    let html = std::fs::read_to_string(page).expect("page");
    let with_script = html.replace("</body>", &format!("<script>{script}</script></body>"));
    std::fs::write(&checked, with_script).expect("writing the checked page");
    let out = chromium(&["--dump-dom"], &checked);
    let dom = String::from_utf8_lossy(&out.stdout);
    let json = dom
        .split("<pre id=\"check\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .unwrap_or_else(|| panic!("the check script did not run: {dom}"))
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("check JSON ({e}): {json}"))
}

/// A PNG screenshot of `page` in a `size` window; checks its signature and size.
pub fn screenshot(page: &Path, size: (u32, u32)) -> Vec<u8> {
    let shot = page.with_extension("png");
    chromium(
        &[
            &format!("--window-size={},{}", size.0, size.1),
            &format!("--screenshot={}", shot.display()),
        ],
        page,
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert_eq!(png.get(1..4), Some(&b"PNG"[..]), "a PNG");
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!((dim(16), dim(20)), size, "the PNG's IHDR size");
    png
}
