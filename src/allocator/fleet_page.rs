//! The fleet page: one self-refreshing HTML document, no external assets,
//! rendered on the server from the allocator's view.

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use super::View;

/// Seconds between the page's own reloads.
const REFRESH_SECONDS: u32 = 5;

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Age of an RFC 3339 `updatedAt`, for people.
fn age(updated_at: &str, now: SystemTime) -> String {
    match humantime::parse_rfc3339(updated_at) {
        Ok(at) => {
            let seconds = now.duration_since(at).unwrap_or(Duration::ZERO).as_secs();
            format!("{seconds} s")
        }
        Err(_) => "unknown".into(),
    }
}

pub fn render(view: &View, min_free_mbps: f64, now: SystemTime) -> String {
    let mut rows = String::new();
    for host in &view.hosts {
        let payload = &host.payload;
        let capacity = if payload.capacity_mbps > 0.0 {
            payload.capacity_mbps
        } else {
            payload.free_traffic.max(1.0)
        };
        let used = (capacity - payload.free_traffic).max(0.0);
        let used_percent = (used / capacity * 100.0).clamp(0.0, 100.0);
        let eligible = payload.free_traffic >= min_free_mbps;
        let isp = if payload.isp.is_empty() {
            "any".to_string()
        } else {
            payload.isp.join(", ")
        };
        let _ = writeln!(
            rows,
            "<tr class=\"{class}\" data-node=\"{node}\"><td class=\"node\">{node}</td><td>{rest}</td>\
             <td><div class=\"bar\" title=\"{used:.1} of {capacity:.1} Mbps used\"><div class=\"used\" style=\"width:{used_percent:.1}%\"></div></div>\
             <span class=\"figures\">{free:.1} free / {used:.1} used / {capacity:.1} Mbps</span></td>\
             <td>{allocations}</td><td>{region}</td><td>{isp}</td><td>{restarts}</td><td>{age}</td><td>{eligible}</td></tr>",
            class = if eligible { "eligible" } else { "ineligible" },
            node = escape(&host.node),
            rest = escape(&payload.rest_addr),
            free = payload.free_traffic,
            region = escape(if payload.region.is_empty() { "-" } else { &payload.region }),
            isp = escape(&isp),
            allocations = payload
                .allocations
                .map_or_else(|| "-".to_string(), |count| count.to_string()),
            restarts = payload.restarts,
            age = escape(&age(&payload.updated_at, now)),
            eligible = if eligible { "yes" } else { "no" },
        );
    }
    let mut state = if view.synced_at.is_none() {
        "waiting for ZooKeeper".to_string()
    } else if view.disconnected_since.is_some() {
        format!(
            "ZooKeeper unreachable; view is {} s old",
            view.age().as_secs()
        )
    } else {
        "live".to_string()
    };
    if let Some(problem) = &view.problem {
        let _ = write!(state, " ({problem})");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>TURN fleet</title><style>\
         body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;width:100%}}th,td{{padding:.35em .6em;border-bottom:1px solid #ddd;text-align:left}}\
         .bar{{display:inline-block;width:12em;height:.8em;background:#cde8cd;vertical-align:middle;margin-right:.5em}}\
         .used{{height:100%;background:#d9534f}}.ineligible{{color:#999}}.figures{{font-size:.85em}}\
         </style></head><body>\
         <h1>TURN fleet</h1><p id=\"summary\">{count} hosts, {eligible} eligible (at least {min_free_mbps} Mbps free); view: {state}</p>\
         <table><thead><tr><th>node</th><th>restAddr</th><th>traffic</th><th>allocations</th><th>region</th><th>ISP</th><th>restarts</th><th>updated</th><th>eligible</th></tr></thead>\
         <tbody>\n{rows}</tbody></table></body></html>\n",
        count = view.hosts.len(),
        eligible = view.hosts.iter().filter(|h| h.payload.free_traffic >= min_free_mbps).count(),
        state = escape(&state),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::Host;
    use crate::znode::HostPayload;

    #[test]
    fn renders_every_host_escaped_with_bars_and_eligibility() {
        let payload = |free: f64| {
            HostPayload::parse(
                format!(r#"{{"freeTraffic":{free},"restAddr":"10.0.0.1:8086","capacityMbps":100,"isp":["a<b"],"updatedAt":"2026-11-22T07:00:00Z"}}"#)
                    .as_bytes(),
            )
            .unwrap()
        };
        let view = View {
            hosts: vec![
                Host {
                    node: "turn-<1>".into(),
                    payload: payload(75.0),
                },
                Host {
                    node: "turn-2".into(),
                    payload: payload(0.5),
                },
            ]
            .into_iter()
            .map(std::sync::Arc::new)
            .collect(),
            synced_at: Some(tokio::time::Instant::now()),
            disconnected_since: None,
            confirmed_at: None,
            live: true,
            problem: None,
        };
        let now = humantime::parse_rfc3339("2026-11-22T07:00:30Z").unwrap();
        let html = render(&view, 1.0, now);
        assert!(html.contains("turn-&lt;1&gt;") && !html.contains("turn-<1>"));
        assert!(html.contains("a&lt;b"));
        assert!(html.contains("width:25.0%"), "{html}");
        assert!(html.contains("<td>30 s</td>"));
        assert!(html.contains("2 hosts, 1 eligible"));
        assert!(html.contains("class=\"ineligible\" data-node=\"turn-2\""));
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(
            !html.contains("src=") && !html.contains("href="),
            "no external assets"
        );
    }
}
