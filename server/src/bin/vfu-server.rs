//! `vfu-server`: serves one sample device on a UNIX socket. The command line is
//! [`vfu_server::cli`], in the library so other executables can run it too.

fn main() -> std::process::ExitCode {
    vfu_server::cli::main_with_args(std::env::args_os())
}
