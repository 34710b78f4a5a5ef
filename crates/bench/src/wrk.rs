//! The load tool: Debian's wrk, run for a fixed time, its `--latency` report parsed.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Time a run may take beyond its `-d`: connecting, the last responses, the report.
const GRACE: Duration = Duration::from_secs(30);

/// How wrk is run: one thread, a fixed number of keep-alive connections, optionally bound to a
/// CPU (with `taskset`, so that it competes with the backends, not with the proxy).
#[derive(Clone, Debug)]
pub struct Wrk {
    pub connections: u32,
    pub cpu: Option<usize>,
}

/// What one wrk run reported.
#[derive(Clone, Debug)]
pub struct WrkReport {
    pub requests: u64,
    /// wrk's own measure of the run's length.
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors (connect, read, write, timeout) and non-2xx/3xx answers.
    pub errors: u64,
}

impl WrkReport {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

impl Wrk {
    /// The command line for a run of `duration` against `url`, as printed in the report.
    pub fn command(&self, duration: Duration, url: &str) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(cpu) = self.cpu {
            args.extend(["taskset".into(), "-c".into(), cpu.to_string()]);
        }
        args.extend([
            "wrk".into(),
            "-t1".into(),
            format!("-c{}", self.connections),
            format!("-d{}s", duration.as_secs()),
            "--timeout".into(),
            "5s".into(),
            "--latency".into(),
            url.into(),
        ]);
        args
    }

    /// Runs wrk for `duration` (whole seconds) against `url` and parses its report. Panics if
    /// wrk fails, hangs or prints something unexpected.
    pub fn run(&self, duration: Duration, url: &str) -> WrkReport {
        let args = self.command(duration, url);
        let mut child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", args.join(" ")));
        let deadline = Instant::now() + duration + GRACE;
        while child.try_wait().expect("poll wrk").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish in time", args.join(" "));
            }
            thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().expect("collect wrk's output");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{} failed ({}):\n{text}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        parse(&text).unwrap_or_else(|| panic!("unexpected output of {}:\n{text}", args.join(" ")))
    }
}

/// Parses wrk 4's report, e.g.
///
/// ```text
///   Latency Distribution
///      50%  178.00us
///      99%  465.00us
///   364152 requests in 5.10s, 52.09MB read
///   Socket errors: connect 0, read 0, write 0, timeout 0
///   Non-2xx or 3xx responses: 5
/// ```
fn parse(text: &str) -> Option<WrkReport> {
    let mut report =
        WrkReport { requests: 0, seconds: 0.0, p50_us: f64::NAN, p99_us: f64::NAN, errors: 0 };
    for line in text.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("50%") {
            report.p50_us = duration_us(value.trim())?;
        } else if let Some(value) = line.strip_prefix("99%") {
            report.p99_us = duration_us(value.trim())?;
        } else if let Some((requests, rest)) = line.split_once(" requests in ") {
            report.requests = requests.parse().ok()?;
            report.seconds = duration_us(rest.split(',').next()?)? / 1e6;
        } else if let Some(counts) = line.strip_prefix("Socket errors:") {
            for count in counts.split(',') {
                report.errors += count.split_whitespace().nth(1)?.parse::<u64>().ok()?;
            }
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.errors += count.trim().parse::<u64>().ok()?;
        }
    }
    let complete = report.requests > 0 && report.seconds > 0.0;
    (complete && report.p50_us.is_finite() && report.p99_us.is_finite()).then_some(report)
}

/// wrk's durations: `178.00us`, `1.02ms`, `5.10s`, `1.00m`, `1.00h`.
fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 5s test @ http://127.0.0.1:9001/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   210.11us  101.25us   4.06ms   92.93%
    Req/Sec    71.74k     2.35k   75.66k    70.00%
  Latency Distribution
     50%  178.00us
     75%  203.00us
     90%  262.00us
     99%    1.02ms
  364152 requests in 5.10s, 52.09MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 5
Requests/sec:  71403.75
Transfer/sec:     10.22MB
";

    #[test]
    fn parses_a_latency_report() {
        let report = parse(SAMPLE).expect("a complete report");
        assert_eq!(report.requests, 364_152);
        assert!((report.seconds - 5.1).abs() < 1e-9);
        assert!((report.p50_us - 178.0).abs() < 1e-9);
        assert!((report.p99_us - 1020.0).abs() < 1e-9);
        assert_eq!(report.errors, 8);
    }

    #[test]
    fn refuses_a_report_without_latencies() {
        assert!(parse("  10 requests in 1.00s, 1KB read\n").is_none());
    }
}
