fn main() -> std::process::ExitCode {
    townlink::cli::main()
}
