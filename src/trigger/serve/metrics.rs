//! Prometheus metrics at `GET /metrics`: the queue's depth, builds by outcome, node durations
//! and requests by endpoint and status.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn histogram() -> Histogram {
    // 0.1 s to about 2 h.
    Histogram::new(exponential_buckets(0.1, 4.0, 10))
}

pub struct Metrics {
    registry: Registry,
    queue_depth: Family<Labels, Gauge>,
    builds: Family<Labels, Counter>,
    node_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    requests: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kiln");
        let queue_depth = Family::<Labels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Builds waiting or running, by state",
            queue_depth.clone(),
        );
        let builds = Family::<Labels, Counter>::default();
        registry.register(
            "builds",
            "Finished builds by outcome (succeeded or failed), as the queue records them",
            builds.clone(),
        );
        let node_seconds: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(histogram);
        registry.register(
            "node_duration_seconds",
            "How long the nodes that ran took, by step and outcome",
            node_seconds.clone(),
        );
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        Metrics {
            registry,
            queue_depth,
            builds,
            node_seconds,
            requests,
        }
    }

    /// Counts `n` more finished builds of `outcome`.
    pub fn builds_finished(&self, outcome: &str, n: u64) {
        self.builds
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc_by(n);
    }

    pub fn node(&self, step: &str, outcome: &str, seconds: f64) {
        self.node_seconds
            .get_or_create(&vec![
                ("step".into(), step.into()),
                ("outcome".into(), outcome.into()),
            ])
            .observe(seconds);
    }

    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("endpoint".into(), endpoint.into()),
                ("status".into(), status.to_string()),
            ])
            .inc();
    }

    /// The text exposition, with the queue depth as of now.
    pub fn render(&self, queued: u64, running: u64) -> String {
        for (state, n) in [("queued", queued), ("running", running)] {
            self.queue_depth
                .get_or_create(&vec![("state".into(), state.into())])
                .set(n as i64);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_family() {
        let m = super::Metrics::new();
        m.builds_finished("succeeded", 2);
        m.node("build", "built", 1.5);
        m.request("/v1/builds", 202);
        let text = m.render(3, 1);
        for want in [
            "kiln_queue_depth{state=\"queued\"} 3",
            "kiln_queue_depth{state=\"running\"} 1",
            "kiln_builds_total{outcome=\"succeeded\"} 2",
            "kiln_node_duration_seconds_count{step=\"build\",outcome=\"built\"} 1",
            "kiln_http_requests_total{endpoint=\"/v1/builds\",status=\"202\"} 1",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
    }
}
