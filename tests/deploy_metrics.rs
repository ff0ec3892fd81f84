//! The Grafana dashboard and the Prometheus alerts query only metrics the server exports
//! (`degre::telemetry::ALL`), so renaming a metric cannot silently blank a panel or an alert.

use std::path::Path;

const DASHBOARD: &str = "deploy/grafana/degre-dashboard.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every token matching `degre_[a-z0-9_]+`, less a histogram's `_bucket`/`_sum`/`_count`.
fn metric_names(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let in_name = |i: usize| {
        bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
    };
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("degre_") {
        let start = from + offset;
        let mut end = start + "degre_".len();
        while in_name(end) {
            end += 1;
        }
        let token = &text[start..end];
        let name = ["_bucket", "_sum", "_count"]
            .into_iter()
            .find_map(|suffix| token.strip_suffix(suffix))
            .unwrap_or(token);
        names.push(name);
        from = end;
    }
    names
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    for file in [DASHBOARD, ALERTS] {
        let text = read(file);
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{file} queries no degre metric");
        for name in names {
            assert!(
                degre::telemetry::ALL.contains(&name),
                "{file} queries {name}, which src/telemetry.rs does not export"
            );
        }
    }
}

#[test]
fn dashboard_is_json_with_panels() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().map_or(0, Vec::len);
    assert!(
        panels >= 6,
        "{DASHBOARD}: {panels} panels, expected at least 6"
    );
}
