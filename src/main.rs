fn main() {
    jsrun::run(std::env::args_os()).exit()
}
