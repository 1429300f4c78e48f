//! Table-driven cases taken from upstream `replica_calculator_test.go` (per-pod levels and
//! requests in millicores; upstream runs them with two containers per pod, which scales
//! both sides alike) and from `horizontal_test.go`'s normalization tests.

use super::*;
use k8s_openapi::api::autoscaling::v2::HPAScalingRules;

const NOW: i64 = 10_000_000;
const COOL_START: i64 = NOW - 10 * 60 * 1000;
const HOT_START: i64 = NOW - 60 * 1000;

#[derive(Clone, Copy)]
enum P {
    Ready,
    Unready,
    Pending,
    Failed,
    Deleting,
    Hot,
}

struct Case {
    name: &'static str,
    current: i32,
    pods: Vec<P>,
    requests: Vec<i64>,
    levels: Vec<i64>,
    target: Target,
    want: Result<(i32, Option<i32>), CalcError>,
}

fn run(c: &Case) {
    let pods: Vec<PodInfo> = c
        .pods
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let (phase, deleting, ready, start) = match k {
                P::Ready => ("Running", false, Some((true, COOL_START)), COOL_START),
                P::Unready => ("Running", false, Some((false, COOL_START)), COOL_START),
                P::Pending => ("Pending", false, Some((false, COOL_START)), COOL_START),
                P::Failed => ("Failed", false, Some((false, COOL_START)), COOL_START),
                P::Deleting => ("Running", true, Some((false, COOL_START)), COOL_START),
                // Became ready just now: the sample predates transition + window.
                P::Hot => ("Running", false, Some((true, NOW)), HOT_START),
            };
            PodInfo {
                name: format!("pod-{i}"),
                phase: phase.into(),
                deleting,
                ready,
                start_ms: Some(start),
                request: c.requests.get(i).copied().ok_or_else(|| "c".to_string()),
            }
        })
        .collect();
    let metrics: BTreeMap<String, Sample> = c
        .levels
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                format!("pod-{i}"),
                Sample {
                    value: *v,
                    timestamp_ms: NOW - 1000,
                    window_ms: 30_000,
                },
            )
        })
        .collect();
    let got = resource_replicas(c.current, c.target, &pods, &metrics, true, NOW)
        .map(|p| (p.replicas, p.utilization));
    assert_eq!(got, c.want, "{}", c.name);
}

fn ready(n: usize) -> Vec<P> {
    vec![P::Ready; n]
}

#[test]
fn replica_calculator_matches_upstream_cases() {
    use P::*;
    let k = |n| vec![1000; n];
    let cases = vec![
        Case {
            name: "ScaleUp",
            current: 3,
            pods: ready(3),
            requests: k(3),
            levels: vec![300, 500, 700],
            target: Target::Utilization(30),
            want: Ok((5, Some(50))),
        },
        Case {
            name: "ScaleUpUnreadyLessScale",
            current: 3,
            pods: vec![Unready, Ready, Ready],
            requests: k(3),
            levels: vec![300, 500, 700],
            target: Target::Utilization(30),
            want: Ok((4, Some(60))),
        },
        Case {
            name: "ScaleDown",
            current: 5,
            pods: ready(5),
            requests: k(5),
            levels: vec![100, 300, 500, 250, 250],
            target: Target::Utilization(50),
            want: Ok((3, Some(28))),
        },
        Case {
            name: "ScaleDownIncludeUnreadyPods",
            current: 5,
            pods: vec![Ready, Ready, Ready, Unready, Unready],
            requests: k(5),
            levels: vec![100, 300, 500, 250, 250],
            target: Target::Utilization(50),
            want: Ok((2, Some(30))),
        },
        Case {
            name: "ScaleDownExcludeUnscheduledPods",
            current: 5,
            pods: vec![Ready, Pending, Pending, Pending, Pending],
            requests: k(5),
            levels: vec![100],
            target: Target::Utilization(50),
            want: Ok((1, Some(10))),
        },
        Case {
            name: "ScaleDownIgnoreHotCpuPods",
            current: 5,
            pods: vec![Ready, Ready, Ready, Hot, Hot],
            requests: k(5),
            levels: vec![100, 300, 500, 250, 250],
            target: Target::Utilization(50),
            want: Ok((2, Some(30))),
        },
        Case {
            name: "ScaleDownIgnoresFailedPods",
            current: 5,
            pods: vec![Ready, Ready, Ready, Ready, Ready, Failed, Failed],
            requests: k(7),
            levels: vec![100, 300, 500, 250, 250],
            target: Target::Utilization(50),
            want: Ok((3, Some(28))),
        },
        Case {
            name: "ScaleDownIgnoresDeletionPods",
            current: 5,
            pods: vec![Ready, Ready, Ready, Ready, Ready, Deleting, Deleting],
            requests: k(7),
            levels: vec![100, 300, 500, 250, 250],
            target: Target::Utilization(50),
            want: Ok((3, Some(28))),
        },
        Case {
            name: "Tolerance",
            current: 3,
            pods: ready(3),
            requests: vec![900, 1000, 1100],
            levels: vec![1010, 1030, 1020],
            target: Target::Utilization(100),
            want: Ok((3, Some(102))),
        },
        Case {
            name: "SuperfluousMetrics",
            current: 4,
            pods: ready(4),
            requests: k(4),
            levels: vec![4000, 9500, 3000, 7000, 3200, 2000],
            target: Target::Utilization(100),
            want: Ok((24, Some(587))),
        },
        Case {
            name: "MissingMetrics",
            current: 4,
            pods: ready(4),
            requests: k(4),
            levels: vec![400, 95],
            target: Target::Utilization(100),
            want: Ok((3, Some(24))),
        },
        Case {
            name: "EmptyMetrics",
            current: 4,
            pods: ready(3),
            requests: k(3),
            levels: vec![],
            target: Target::Utilization(100),
            want: Err(CalcError::NoMetrics),
        },
        Case {
            name: "EmptyCPURequest",
            current: 1,
            pods: ready(1),
            requests: vec![],
            levels: vec![200],
            target: Target::Utilization(100),
            want: Err(CalcError::MissingRequest {
                resource: "cpu".into(),
                container: "c".into(),
                pod: "pod-0".into(),
            }),
        },
        Case {
            name: "MissingMetricsNoChangeEq",
            current: 2,
            pods: ready(2),
            requests: k(2),
            levels: vec![1000],
            target: Target::Utilization(100),
            want: Ok((2, Some(100))),
        },
        Case {
            name: "MissingMetricsNoChangeGt",
            current: 2,
            pods: ready(2),
            requests: k(2),
            levels: vec![1900],
            target: Target::Utilization(100),
            want: Ok((2, Some(190))),
        },
        Case {
            name: "MissingMetricsNoChangeLt",
            current: 2,
            pods: ready(2),
            requests: k(2),
            levels: vec![600],
            target: Target::Utilization(100),
            want: Ok((2, Some(60))),
        },
        Case {
            name: "MissingMetricsUnreadyChange",
            current: 3,
            pods: vec![Unready, Ready, Ready],
            requests: k(3),
            levels: vec![100, 450],
            target: Target::Utilization(50),
            want: Ok((3, Some(45))),
        },
        Case {
            name: "MissingMetricsHotCpuNoChange",
            current: 3,
            pods: vec![Hot, Ready, Ready],
            requests: k(3),
            levels: vec![100, 450],
            target: Target::Utilization(50),
            want: Ok((3, Some(45))),
        },
        Case {
            name: "MissingMetricsUnreadyScaleUp",
            current: 3,
            pods: vec![Unready, Ready, Ready],
            requests: k(3),
            levels: vec![100, 2000],
            target: Target::Utilization(50),
            want: Ok((4, Some(200))),
        },
        Case {
            name: "MissingMetricsUnreadyScaleDown",
            current: 4,
            pods: vec![Unready, Ready, Ready, Ready],
            requests: k(4),
            levels: vec![100, 100, 100],
            target: Target::Utilization(50),
            want: Ok((3, Some(10))),
        },
        Case {
            name: "DuringRollingUpdateWithMaxSurge",
            current: 2,
            pods: ready(3),
            requests: k(3),
            levels: vec![100, 100],
            target: Target::Utilization(50),
            want: Ok((2, Some(10))),
        },
        Case {
            name: "NoPods",
            current: 2,
            pods: vec![],
            requests: vec![],
            levels: vec![],
            target: Target::Utilization(50),
            want: Err(CalcError::NoPods),
        },
        // averageValue (GetRawResourceReplicas / calcPlainMetricReplicas).
        Case {
            name: "AverageValueScaleUp",
            current: 3,
            pods: ready(3),
            requests: vec![],
            levels: vec![20000, 10000, 30000],
            target: Target::AverageValue(15000),
            want: Ok((4, None)),
        },
        Case {
            name: "AverageValueScaleDown",
            current: 5,
            pods: ready(5),
            requests: vec![],
            levels: vec![12000; 5],
            target: Target::AverageValue(20000),
            want: Ok((3, None)),
        },
        Case {
            name: "AverageValueTolerance",
            current: 3,
            pods: ready(3),
            requests: vec![],
            levels: vec![20000, 21000, 21000],
            target: Target::AverageValue(20000),
            want: Ok((3, None)),
        },
        Case {
            name: "AverageValueMissingScaleDown",
            current: 4,
            pods: ready(4),
            requests: vec![],
            levels: vec![1000, 1000],
            target: Target::AverageValue(10000),
            want: Ok((3, None)),
        },
    ];
    for c in &cases {
        run(c);
    }
}

#[test]
fn memory_ignores_cpu_readiness_rules() {
    let pods = vec![PodInfo {
        name: "p".into(),
        phase: "Running".into(),
        deleting: false,
        ready: Some((false, NOW)),
        start_ms: Some(NOW),
        request: Ok(1000),
    }];
    let m = BTreeMap::from([(
        "p".to_string(),
        Sample {
            value: 2000,
            timestamp_ms: NOW,
            window_ms: 0,
        },
    )]);
    let p = resource_replicas(1, Target::Utilization(100), &pods, &m, false, NOW).unwrap();
    assert_eq!(p.replicas, 2, "an unready pod's memory still counts");
    let p = resource_replicas(1, Target::Utilization(100), &pods, &m, true, NOW);
    assert_eq!(
        p,
        Err(CalcError::NoMetrics),
        "an unready pod's cpu does not"
    );
}

fn rules(window: Option<i32>, select: &str, policies: &[(&str, i32, i32)]) -> HPAScalingRules {
    HPAScalingRules {
        stabilization_window_seconds: window,
        select_policy: Some(select.into()),
        policies: Some(
            policies
                .iter()
                .map(|(t, v, p)| HPAScalingPolicy {
                    type_: (*t).into(),
                    value: *v,
                    period_seconds: *p,
                })
                .collect(),
        ),
        tolerance: None,
    }
}

fn behavior(
    up: Option<HPAScalingRules>,
    down: Option<HPAScalingRules>,
) -> HorizontalPodAutoscalerBehavior {
    HorizontalPodAutoscalerBehavior {
        scale_up: up,
        scale_down: down,
    }
}

#[test]
fn legacy_rules_limit_scale_up_and_stabilize_scale_down() {
    let mut r = Recommender::default();
    // Scale-up limit max(2x, 4).
    let (n, _, lim) = r.normalize("a", None, 3, 10, 1, 20, NOW);
    assert_eq!((n, lim.1, lim.2), (6, true, "ScaleUpLimit"));
    let (n, _, lim) = r.normalize("b", None, 1, 10, 1, 3, NOW);
    assert_eq!((n, lim.2), (3, "TooManyReplicas"));
    let (n, _, lim) = r.normalize("c", None, 2, 0, 2, 10, NOW);
    assert_eq!((n, lim.2), (2, "TooFewReplicas"));
    // Down: the highest recommendation of the last 5 minutes wins.
    r.initial("d", 8, NOW - 100_000);
    let (n, able, _) = r.normalize("d", None, 8, 4, 1, 10, NOW);
    assert_eq!((n, able.2), (8, "ScaleDownStabilized"));
    let (n, able, _) = r.normalize("d", None, 8, 4, 1, 10, NOW + 301_000);
    assert_eq!((n, able.2), (4, "ReadyForNewScale"));
}

#[test]
fn behavior_policies_and_windows() {
    let default_b = behavior(None, None);
    // Defaults: up by max(+4, +100%) per 15 s; down stabilized for 300 s.
    let mut r = Recommender::default();
    let (n, _, lim) = r.normalize("a", Some(&default_b), 10, 50, 1, 100, NOW);
    assert_eq!((n, lim.1, lim.2), (20, true, "ScaleUpLimit"));
    r.scaled("a", Some(&default_b), 10, 20, NOW);
    // Within the same 15 s period the limit is measured from the period's start (10).
    let (n, _, _) = r.normalize("a", Some(&default_b), 20, 50, 1, 100, NOW + 5_000);
    assert_eq!(n, 20);
    let (n, _, _) = r.normalize("a", Some(&default_b), 20, 50, 1, 100, NOW + 16_000);
    assert_eq!(n, 40);
    // selectPolicy Min picks the smaller change.
    let min_b = behavior(
        Some(rules(
            Some(0),
            "Min",
            &[("Pods", 4, 15), ("Percent", 100, 15)],
        )),
        None,
    );
    let mut r = Recommender::default();
    assert_eq!(r.normalize("m", Some(&min_b), 10, 50, 1, 100, NOW).0, 14);
    // Disabled: never up.
    let off = behavior(Some(rules(Some(0), "Disabled", &[("Pods", 4, 15)])), None);
    assert_eq!(r.normalize("o", Some(&off), 10, 50, 1, 100, NOW).0, 10);
    // Scale-down window: a high recommendation 60 s ago holds the size.
    let mut r = Recommender::default();
    r.initial("d", 10, NOW - 60_000);
    let (n, able, _) = r.normalize("d", Some(&default_b), 10, 2, 1, 100, NOW);
    assert_eq!((n, able.2), (10, "ScaleDownStabilized"));
    // Without a window, one pod per 60 s.
    let slow = behavior(None, Some(rules(Some(0), "Max", &[("Pods", 1, 60)])));
    let mut r = Recommender::default();
    let (n, _, lim) = r.normalize("s", Some(&slow), 10, 5, 1, 100, NOW);
    assert_eq!((n, lim.2), (9, "ScaleDownLimit"));
    r.scaled("s", Some(&slow), 10, 9, NOW);
    assert_eq!(
        r.normalize("s", Some(&slow), 9, 5, 1, 100, NOW + 30_000).0,
        9
    );
    assert_eq!(
        r.normalize("s", Some(&slow), 9, 5, 1, 100, NOW + 61_000).0,
        8
    );
    // min/max still bound the result.
    let mut r = Recommender::default();
    let nowin = behavior(None, Some(rules(Some(0), "Max", &[("Percent", 100, 15)])));
    let (n, _, lim) = r.normalize("x", Some(&nowin), 5, 0, 2, 10, NOW);
    assert_eq!((n, lim.2), (2, "TooFewReplicas"));
    // Scale-up window: a low recommendation within it holds the size.
    let upwin = behavior(Some(rules(Some(60), "Max", &[("Percent", 100, 15)])), None);
    let mut r = Recommender::default();
    r.initial("u", 3, NOW - 30_000);
    let (n, able, _) = r.normalize("u", Some(&upwin), 3, 6, 1, 10, NOW);
    assert_eq!((n, able.2), (3, "ScaleUpStabilized"));
}
