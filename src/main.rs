//! The `rocm-llm` command line: the effectful edge around the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
