fn main() {
    println!(
        "ditto: contract v{}",
        ditto_shaders::contract::CONTRACT_VERSION
    );
}
