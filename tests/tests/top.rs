//! `energy-agent top` in a real terminal: tmux runs it, capture-pane reads the screen,
//! send-keys types.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use energy_tests::{agent_bin, require_root, test_bin};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (apt-get install tmux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the pane shows all of `needles`; returns the screen.
fn screen_with(session: &str, needles: &[&str], timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if needles.iter().all(|n| screen.contains(n)) {
            return screen;
        }
        assert!(
            start.elapsed() < timeout,
            "never showed {needles:?}; last screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn top_shows_the_header_and_a_burning_process_and_q_quits_cleanly() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let exit_file = dir.path().join("exit");
    let session = format!("energy-top-{}", std::process::id());
    let cmd = format!(
        "{} top --interval 400ms --no-gpu --region FR; echo $? > {}",
        agent_bin().display(),
        exit_file.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "40",
        &cmd,
    ]);
    let mut burner = Command::new(test_bin("burner"))
        .args(["4.0", "1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let screen = screen_with(
        &session,
        &["energy-agent top", "burner"],
        Duration::from_secs(15),
    );
    assert!(
        screen.contains("sources: cpu estimate (ESTIMATED)"),
        "{screen}"
    );
    assert!(screen.contains("table:FRA"), "{screen}");
    assert!(screen.contains("gCO2e/h"), "{screen}");
    assert!(screen.contains("GPU W"), "a GPU column: {screen}");
    let row = screen.lines().find(|l| l.contains("burner")).unwrap();
    assert!(
        row.trim_start().starts_with(&burner.id().to_string()),
        "the burner's pid leads its row: {row}"
    );

    tmux(&["send-keys", "-t", &session, "m"]);
    screen_with(&session, &["view: models", "MODEL"], Duration::from_secs(5));
    tmux(&["send-keys", "-t", &session, "s"]);
    screen_with(&session, &["sorted by joules"], Duration::from_secs(5));

    tmux(&["send-keys", "-t", &session, "q"]);
    let start = Instant::now();
    while !exit_file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "top did not quit on q"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read_to_string(&exit_file).unwrap().trim(),
        "0",
        "exit status after q"
    );
    let _ = burner.kill();
    let _ = burner.wait();
    tmux(&["kill-session", "-t", &session]);
}

#[test]
fn top_without_a_terminal_says_so() {
    require_root();
    let out = Command::new(agent_bin())
        .args(["top", "--no-gpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a terminal"));
}
