//! Lets this crate's binaries, tests and benches find libtorch without LD_LIBRARY_PATH, and keeps
//! libtorch_cuda linked: `--as-needed` would drop it, since nothing references it by symbol,
//! and CUDA would then look unavailable.
fn main() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports its lib dir");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
