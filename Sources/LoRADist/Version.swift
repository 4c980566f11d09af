/// The version `lora-dist --version` prints.
public enum LoRADistVersion {
    public static let current = "0.8.0"
}
