//! The runtime's shim as a small stand-alone binary: the kubelet starts it for every pod
//! sandbox and container when it sits next to the kubelet's own binary and is of the same
//! build (`node::shim::program_for`); the `kubeshard` binary serves the same role through its
//! hidden first argument otherwise. Tests start this one.

fn main() {
    node::shim::run_if_requested();
    eprintln!(
        "usage: kubeshard-shim {} sandbox|container DIR | exec DIR EXEC_DIR | build-id",
        node::shim::SHIM_ARG
    );
    std::process::exit(2);
}
