//! Compiles `src/shim.cpp` against the headers of the libtorch that torch-sys links, with its
//! C++ ABI (the torch 2.11 wheel uses the new one), and lets this crate's tests find libtorch
//! without LD_LIBRARY_PATH.
use std::path::Path;

fn main() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports its lib dir");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let include =
        Path::new(&lib).parent().expect("libtorch's lib dir has a parent").join("include");
    println!("cargo:rerun-if-changed=src/shim.cpp");
    cc::Build::new()
        .cpp(true)
        .file("src/shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("torch_shim");
}
