//! Records which Python the host was built against: its interpreter becomes the embedded
//! one's `sys.executable` (so that `subprocess` and `multiprocessing` start Python, not the
//! server), and a Python without a shared library is refused here, with the reason.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    let config = pyo3_build_config::get();
    if !config.shared() {
        panic!(
            "the Python host embeds CPython through its shared library, but the Python it is \
             built against ({}) has none: use a Python built with --enable-shared (Debian: \
             apt-get install libpython3-dev), or set PYO3_PYTHON to one",
            config.executable().unwrap_or("python3")
        );
    }
    let executable = config.executable().unwrap_or_default().to_string();
    println!("cargo:rustc-env=MSR_PYTHON_EXECUTABLE={executable}");
    println!(
        "cargo:rustc-env=MSR_PYTHON_VERSION={}.{}",
        config.version().major,
        config.version().minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
