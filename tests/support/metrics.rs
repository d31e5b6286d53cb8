//! Reading limpet's Prometheus text from the admin `/metrics`.

use super::Limpet;

/// Sum of the samples of `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then_some(value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `limpet_sticky_lookups_total` with this result.
pub fn lookups(metrics: &str, result: &str) -> f64 {
    metric(
        metrics,
        "limpet_sticky_lookups_total",
        &[("result", result)],
    )
}

/// Sum of a gauge over its labels, scraped now.
pub async fn gauge(limpet: &Limpet, name: &str) -> i64 {
    metric(&limpet.metrics().await, name, &[]) as i64
}
