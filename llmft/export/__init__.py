"""Export a registered model for llama.cpp and Ollama: merged safetensors, GGUF (f16, Q8_0), Modelfile."""
