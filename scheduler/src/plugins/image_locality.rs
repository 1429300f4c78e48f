//! ImageLocality: prefers nodes that already hold the pod's images, scaled by how widely
//! each image is spread (so one node is not favoured for an image every node has).

use crate::framework::{CycleState, MAX_NODE_SCORE, Plugin, ScorePlugin};
use crate::model::{NodeInfo, PodInfo, Snapshot};

const MB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// ImageLocality.
#[derive(Debug, Default)]
pub struct ImageLocality;

impl Plugin for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

impl ScorePlugin for ImageLocality {
    #[inline]
    fn score(
        &self,
        _: usize,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        snap: &Snapshot,
    ) -> i64 {
        if pod.images.is_empty() {
            return 0;
        }
        let mut sum = 0i64;
        if !node.images.is_empty() {
            let total = snap.nodes.len().max(1) as f64;
            for img in &pod.images {
                if let Some(size) = node.images.get(img) {
                    let spread = *snap.image_nodes.get(img).unwrap_or(&1) as f64 / total;
                    sum += (*size as f64 * spread) as i64;
                }
            }
        }
        let max = MAX_CONTAINER_THRESHOLD * pod.images.len() as i64;
        let sum = sum.clamp(MIN_THRESHOLD, max);
        MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::plugins::testutil::*;

    #[test]
    fn image_locality_table() {
        let fw = single("ImageLocality", None);
        let img = |name: &str, images: serde_json::Value| {
            node(json!({"metadata": {"name": name}, "status": {"images": images}}))
        };
        let s = snap(vec![
            img(
                "a",
                json!([{"names": ["big:1"], "sizeBytes": 500 * 1024 * 1024}]),
            ),
            img(
                "b",
                json!([{"names": ["big:1"], "sizeBytes": 500 * 1024 * 1024}, {"names": ["small"], "sizeBytes": 10 * 1024 * 1024}]),
            ),
            img("c", json!([])),
            img("d", json!([])),
        ]);
        let p = pod(json!({"spec": {"containers": [{"name": "c", "image": "big:1"}]}}));
        // 500MiB * 2/4 nodes = 250MiB; (250-23)*100/(1000-23) = 23
        assert_eq!(score_all(&fw, &p, &s), vec![23, 23, 0, 0]);
        // "small" normalizes to small:latest; under the 23MiB threshold it scores 0.
        let q = pod(json!({"spec": {"containers": [{"name": "c", "image": "small"}]}}));
        assert_eq!(score_all(&fw, &q, &s), vec![0, 0, 0, 0]);
    }
}
