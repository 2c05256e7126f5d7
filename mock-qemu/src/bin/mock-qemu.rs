//! `mock-qemu`: a vfio-user client in QEMU's role. The command line is [`mock_qemu::cli`], in
//! the library so other executables can run it too.

fn main() -> std::process::ExitCode {
    mock_qemu::cli::main_with_args(std::env::args_os())
}
