fn main() {
    std::process::exit(lowbit::cli::main());
}
