//! Compiles every `.proto` below this folder with protox (pure Rust, so no system `protoc` is needed)
//! and writes both the tonic/prost code and the encoded `FileDescriptorSet` into `OUT_DIR`.

use std::{env, error::Error, fs, path::Path, path::PathBuf};

fn proto_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, found)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            found.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let mut files = Vec::new();
    for top in ["commerce", "google"] {
        proto_files(&root.join(top), &mut files)?;
    }
    files.sort();
    let relative: Vec<PathBuf> = files
        .iter()
        .map(|file| file.strip_prefix(&root).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?;

    let mut compiler = protox::Compiler::new([&root])?;
    // Source info carries the contracts' comments: the edge's OpenAPI document and server
    // reflection describe the API with them.
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&relative)?;
    // Encoded by protox itself: prost's descriptor types would drop the `google.api.http` options
    // that the edge proxy routes by.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    // Without the comments the generated code stays as it was: prost would otherwise turn them into
    // doc comments, whose indented lines rustdoc runs as doctests.
    let mut descriptors = compiler.file_descriptor_set();
    for file in &mut descriptors.file {
        file.source_code_info = None;
    }

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Services answer UNIMPLEMENTED for an RPC their issue has not built yet.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;

    println!("cargo:rerun-if-changed=commerce");
    println!("cargo:rerun-if-changed=google");
    Ok(())
}
