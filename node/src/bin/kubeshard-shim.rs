//! The runtime's shim as a stand-alone binary (tests start this one; the `kubeshard` binary
//! serves the same role through its hidden first argument).

fn main() {
    node::shim::run_if_requested();
    eprintln!(
        "usage: kubeshard-shim {} sandbox|container DIR",
        node::shim::SHIM_ARG
    );
    std::process::exit(2);
}
