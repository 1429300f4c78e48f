//! The conformance suite run against every backend this crate has.

mod engine {
    crate::conformance_tests!(crate::conformance::harness::engine);
}

mod real_etcd {
    crate::conformance_tests!(crate::conformance::harness::real_etcd);
}

mod face_over_engine {
    crate::conformance_tests!(crate::conformance::harness::face_over_engine);
}
