//! Live intensities from HTTP APIs: Electricity Maps (v3 `carbon-intensity/latest`) and
//! WattTime (v3 `forecast`, marginal `co2_moer`). A background thread refreshes a
//! cached value; every request has a timeout; when the API fails (unreachable, 401,
//! timeout, a malformed body) the table value is used and the reason is reported with
//! every figure, until a later refresh succeeds.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use super::{Intensity, IntensityProvider, table::Table};

/// 1 lb/MWh in g/kWh.
pub const G_PER_KWH_PER_LB_PER_MWH: f64 = 0.453_592_37;

/// Where and how to ask.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// API base URL (e.g. `https://api.electricitymaps.com/v3`, `https://api.watttime.org`).
    pub base_url: String,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How long a fetched value is used before asking again.
    pub refresh: Duration,
}

/// A live API.
#[derive(Clone, Debug)]
pub enum Api {
    /// Electricity Maps: zone and auth token.
    ElectricityMaps {
        /// Zone, e.g. `DE` or `US-CAL-CISO`.
        zone: String,
        /// `auth-token` header value.
        token: String,
    },
    /// WattTime: region and account.
    WattTime {
        /// Region, e.g. `CAISO_NORTH`.
        region: String,
        /// Account name.
        username: String,
        /// Account password.
        password: String,
    },
}

impl Api {
    fn label(&self) -> String {
        match self {
            Api::ElectricityMaps { zone, .. } => format!("electricitymaps:{zone}"),
            Api::WattTime { region, .. } => format!("watttime:{region} (marginal)"),
        }
    }
}

/// An HTTP client whose every request times out after `timeout`.
pub(super) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET `url` with headers; the body on 2xx, else an error naming the status.
pub(super) fn get(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, String)],
) -> Result<String, String> {
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let mut resp = req.call().map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
    if !(200..300).contains(&status) {
        let snippet: String = body.chars().take(120).collect();
        return Err(format!("GET {url}: HTTP {status}: {snippet}"));
    }
    Ok(body)
}

/// Parses an Electricity Maps `carbon-intensity/latest` body.
pub fn parse_electricity_maps(body: &str) -> Result<f64, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("malformed Electricity Maps body: {e}"))?;
    v["carbonIntensity"]
        .as_f64()
        .filter(|g| g.is_finite() && *g >= 0.0)
        .ok_or_else(|| "malformed Electricity Maps body: no numeric carbonIntensity".to_string())
}

/// Parses a WattTime v3 `forecast` (or `historical`) body: the first point, converted
/// from lbs/MWh to g/kWh.
pub fn parse_watttime(body: &str) -> Result<f64, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("malformed WattTime body: {e}"))?;
    let units = v["meta"]["units"].as_str().unwrap_or("lbs_co2_per_mwh");
    if units != "lbs_co2_per_mwh" {
        return Err(format!(
            "WattTime units {units:?}, expected lbs_co2_per_mwh"
        ));
    }
    v["data"][0]["value"]
        .as_f64()
        .filter(|g| g.is_finite() && *g >= 0.0)
        .map(|lbs| lbs * G_PER_KWH_PER_LB_PER_MWH)
        .ok_or_else(|| "malformed WattTime body: no data[0].value".to_string())
}

/// Standard base64 (RFC 4648) for HTTP Basic auth.
fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Logs in to WattTime (HTTP Basic); returns the bearer token.
pub(super) fn watttime_login(
    agent: &ureq::Agent,
    base: &str,
    username: &str,
    password: &str,
) -> Result<String, String> {
    let basic = format!(
        "Basic {}",
        base64(format!("{username}:{password}").as_bytes())
    );
    let body = get(agent, &format!("{base}/login"), &[("Authorization", basic)])?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("malformed WattTime login body: {e}"))?;
    Ok(v["token"]
        .as_str()
        .ok_or("malformed WattTime login body: no token")?
        .to_string())
}

/// One fetch of the current intensity, g/kWh.
fn fetch(
    api: &Api,
    opts: &RemoteOptions,
    agent: &ureq::Agent,
    token: &mut Option<String>,
) -> Result<f64, String> {
    let base = opts.base_url.trim_end_matches('/');
    match api {
        Api::ElectricityMaps { zone, token } => {
            let url = format!("{base}/carbon-intensity/latest?zone={zone}");
            parse_electricity_maps(&get(agent, &url, &[("auth-token", token.clone())])?)
        }
        Api::WattTime {
            region,
            username,
            password,
        } => {
            for attempt in 0..2 {
                if token.is_none() {
                    *token = Some(watttime_login(agent, base, username, password)?);
                }
                let url = format!(
                    "{base}/v3/forecast?region={region}&signal_type=co2_moer&horizon_hours=0"
                );
                let bearer = format!("Bearer {}", token.as_deref().unwrap_or_default());
                match get(agent, &url, &[("Authorization", bearer)]) {
                    Ok(body) => return parse_watttime(&body),
                    // An expired token (they last ~30 min): log in again once.
                    Err(e) if e.contains("HTTP 401") && attempt == 0 => *token = None,
                    Err(e) => return Err(e),
                }
            }
            Err("WattTime: login did not give a usable token".into())
        }
    }
}

#[derive(Debug, Default)]
struct Cached {
    value: Option<(f64, Instant)>,
    last_error: Option<String>,
    requests: u64,
}

/// An API provider with a cache, a refresh thread, and the table as fallback.
pub struct Remote {
    label: String,
    fallback: Table,
    cache: Arc<Mutex<Cached>>,
    max_age: Duration,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Remote {
    /// Asks once now (so the first interval has a value or a reason), then keeps
    /// refreshing every `opts.refresh` in the background.
    pub fn start(api: Api, opts: RemoteOptions, fallback: Table) -> Self {
        let cache = Arc::new(Mutex::new(Cached::default()));
        let agent = agent(opts.timeout);
        let mut token = None;
        let update = |cache: &Mutex<Cached>, result: Result<f64, String>| {
            if let Ok(mut c) = cache.lock() {
                c.requests += 1;
                match result {
                    Ok(g) => {
                        c.value = Some((g, Instant::now()));
                        c.last_error = None;
                    }
                    Err(e) => {
                        log::warn!("carbon intensity: {e}");
                        c.last_error = Some(e);
                    }
                }
            }
        };
        update(&cache, fetch(&api, &opts, &agent, &mut token));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (cache, stop, api, opts) = (cache.clone(), stop.clone(), api.clone(), opts.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now() + opts.refresh;
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        update(&cache, fetch(&api, &opts, &agent, &mut token));
                        next = Instant::now() + opts.refresh;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self {
            label: api.label(),
            fallback,
            cache,
            max_age: opts.refresh * 3,
            stop,
            thread: Some(thread),
        }
    }

    /// Requests made so far (for tests of the cache).
    pub fn requests(&self) -> u64 {
        self.cache.lock().map(|c| c.requests).unwrap_or(0)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl IntensityProvider for Remote {
    fn intensity(&mut self, _at: SystemTime) -> Intensity {
        let cached = self.cache.lock().ok();
        let (value, error) = match &cached {
            Some(c) => (c.value, c.last_error.clone()),
            None => (None, Some("cache poisoned".into())),
        };
        match value {
            Some((g, fetched)) if fetched.elapsed() <= self.max_age => Intensity {
                g_per_kwh: g,
                source: self.label.clone(),
                note: error.map(|e| {
                    format!(
                        "last refresh failed, value {}s old: {e}",
                        fetched.elapsed().as_secs()
                    )
                }),
            },
            _ => {
                let mut i = self.fallback.value().clone();
                i.note = Some(format!(
                    "{} unavailable ({}); using {}",
                    self.label,
                    error.unwrap_or_else(|| "no value yet".into()),
                    i.source
                ));
                i
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::{
        io::{BufRead, BufReader, Write},
        net::TcpListener,
    };

    /// A local HTTP server that answers each request with `respond(path, headers)`:
    /// (status, body, delay before answering).
    pub(crate) fn serve(
        respond: impl Fn(&str, &str) -> (u16, String, Duration) + Send + 'static,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut headers = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    headers.push_str(&line);
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                log.lock().unwrap().push(path.clone());
                let (status, body, delay) = respond(&path, &headers);
                std::thread::sleep(delay);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, seen)
    }

    fn opts(url: &str) -> RemoteOptions {
        RemoteOptions {
            base_url: url.into(),
            timeout: Duration::from_millis(300),
            refresh: Duration::from_secs(60),
        }
    }

    fn em(zone: &str) -> Api {
        Api::ElectricityMaps {
            zone: zone.into(),
            token: "secret".into(),
        }
    }

    const EM_BODY: &str = r#"{"zone":"DE","carbonIntensity":302,"datetime":"2026-11-29T10:00:00.000Z","updatedAt":"2026-11-29T10:05:00.000Z","createdAt":"2026-11-26T10:00:00.000Z","emissionFactorType":"lifecycle","isEstimated":true,"estimationMethod":"TIME_SLICER_AVERAGE"}"#;

    #[test]
    fn electricity_maps_success_is_cached() {
        let (url, seen) = serve(|path, headers| {
            assert!(
                path.starts_with("/carbon-intensity/latest?zone=DE"),
                "{path}"
            );
            assert!(
                headers.to_ascii_lowercase().contains("auth-token: secret"),
                "{headers}"
            );
            (200, EM_BODY.into(), Duration::ZERO)
        });
        let mut r = Remote::start(em("DE"), opts(&url), Table::new(Some("DE")).unwrap());
        for _ in 0..3 {
            let i = r.intensity(SystemTime::now());
            assert_eq!(i.g_per_kwh, 302.0);
            assert_eq!(i.source, "electricitymaps:DE");
            assert!(i.note.is_none());
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "cached, not fetched per call"
        );
        assert_eq!(r.requests(), 1);
    }

    #[test]
    fn unauthorized_falls_back_to_the_table_with_the_reason() {
        let (url, _) = serve(|_, _| (401, r#"{"error":"invalid token"}"#.into(), Duration::ZERO));
        let mut r = Remote::start(em("FR"), opts(&url), Table::new(Some("FR")).unwrap());
        let i = r.intensity(SystemTime::now());
        assert_eq!(i.g_per_kwh, 56.039);
        assert!(i.source.starts_with("table:FRA"));
        let note = i.note.unwrap();
        assert!(
            note.contains("electricitymaps:FR unavailable") && note.contains("HTTP 401"),
            "{note}"
        );
    }

    #[test]
    fn a_timeout_falls_back() {
        let (url, _) = serve(|_, _| (200, EM_BODY.into(), Duration::from_secs(2)));
        let started = Instant::now();
        let mut r = Remote::start(em("DE"), opts(&url), Table::new(Some("DE")).unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the timeout bounds the wait"
        );
        let i = r.intensity(SystemTime::now());
        assert_eq!(i.g_per_kwh, 380.95);
        let note = i.note.unwrap();
        eprintln!("{note}");
        assert!(note.contains("electricitymaps:DE unavailable"), "{note}");
        assert!(
            note.to_lowercase().contains("timeout") || note.to_lowercase().contains("timed out"),
            "{note}"
        );
    }

    #[test]
    fn a_malformed_body_falls_back() {
        let (url, _) = serve(|_, _| {
            (
                200,
                r#"{"zone":"DE","carbonIntensity":"lots"}"#.into(),
                Duration::ZERO,
            )
        });
        let mut r = Remote::start(em("DE"), opts(&url), Table::new(Some("DE")).unwrap());
        let i = r.intensity(SystemTime::now());
        assert!(i.source.starts_with("table:DEU"));
        assert!(i.note.unwrap().contains("no numeric carbonIntensity"));
    }

    #[test]
    fn watttime_logs_in_then_converts_lbs_per_mwh() {
        let (url, seen) = serve(|path, headers| {
            if path == "/login" {
                // "user:pass" in base64.
                assert!(headers.contains("Basic dXNlcjpwYXNz"), "{headers}");
                return (200, r#"{"token":"jwt123"}"#.into(), Duration::ZERO);
            }
            assert!(headers.contains("Bearer jwt123"), "{headers}");
            assert!(
                path.contains("region=CAISO_NORTH") && path.contains("signal_type=co2_moer"),
                "{path}"
            );
            (
                200,
                r#"{"data":[{"point_time":"2026-11-29T10:00:00+00:00","value":1000.0}],"meta":{"region":"CAISO_NORTH","signal_type":"co2_moer","units":"lbs_co2_per_mwh"}}"#.into(),
                Duration::ZERO,
            )
        });
        let api = Api::WattTime {
            region: "CAISO_NORTH".into(),
            username: "user".into(),
            password: "pass".into(),
        };
        let mut r = Remote::start(api, opts(&url), Table::new(Some("US")).unwrap());
        let i = r.intensity(SystemTime::now());
        assert!((i.g_per_kwh - 453.59237).abs() < 1e-9, "{}", i.g_per_kwh);
        assert!(i.source.starts_with("watttime:CAISO_NORTH"));
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn parsers_and_base64() {
        assert_eq!(parse_electricity_maps(EM_BODY).unwrap(), 302.0);
        assert!(
            parse_electricity_maps("<html>")
                .unwrap_err()
                .contains("malformed")
        );
        assert!(parse_watttime(r#"{"data":[],"meta":{"units":"lbs_co2_per_mwh"}}"#).is_err());
        assert!(
            parse_watttime(r#"{"data":[{"value":1}],"meta":{"units":"percent"}}"#)
                .unwrap_err()
                .contains("units")
        );
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
