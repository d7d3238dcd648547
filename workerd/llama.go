package workerd

import (
	"fmt"
	"net"
	"strconv"
)

// Engines that run GGUF models with llama.cpp: Ollama (`ollama serve`) and llama.cpp's own
// `llama-server`. Both run on CPUs (GPUs when given), publish no KV events (the router
// follows them in approximate mode) and keep each request's prompt in a slot's KV cache,
// reusing its longest common prefix with the next request on that slot.

// Defaults of the command lines below.
const (
	// LlamaParallel is how many requests one engine decodes together (Ollama's
	// OLLAMA_NUM_PARALLEL, llama-server's --parallel): one KV slot each.
	LlamaParallel = 4
	// LlamaServerContext is llama-server's --ctx-size: shared by the slots, 4096 tokens each.
	LlamaServerContext = 16384
	// LlamaServerCacheReuse is llama-server's --cache-reuse: the shortest run of tokens (past a
	// common prefix) it moves within a slot's cache instead of recomputing.
	LlamaServerCacheReuse = 256
)

// Health paths: Ollama has no /health; its root answers 200 "Ollama is running".
const (
	healthPathDefault = "/health"
	healthPathOllama  = "/"
)

// cpuKind reports whether the kind runs without a GPU unless given some.
func cpuKind(kind string) bool {
	return kind == KindSim || kind == KindOllama || kind == KindLlamaCpp
}

// eventlessKind reports whether the kind has no KV-event publisher to ask for.
func eventlessKind(kind string) bool { return kind == KindOllama || kind == KindLlamaCpp }

// OllamaEnv is the environment `ollama serve` gets: listen on host:port, Ollama's own engine
// (OLLAMA_NEW_ENGINE: its Go runner, whose multi-user cache keeps each slot's prompt for
// prefix reuse; the llama.cpp runner aborts on the second request with that cache),
// LlamaParallel slots, and models kept loaded (a model unloaded after the default 5 idle
// minutes would lose every cached prompt).
func OllamaEnv(host string, port int) []string {
	return []string{
		"OLLAMA_HOST=" + net.JoinHostPort(host, strconv.Itoa(port)),
		"OLLAMA_NEW_ENGINE=1",
		"OLLAMA_MULTIUSER_CACHE=1",
		"OLLAMA_NUM_PARALLEL=" + strconv.Itoa(LlamaParallel),
		"OLLAMA_KEEP_ALIVE=-1",
	}
}

// LlamaServerArgs are llama-server's flags: the GGUF file model, listen on host:port, served
// as alias ("" = the file's path), LlamaParallel slots sharing LlamaServerContext tokens,
// cache reuse past the common prefix, Prometheus /metrics, and every layer on the GPUs when
// it has any.
func LlamaServerArgs(host string, port int, model, alias string, gpus int) []string {
	args := []string{
		"--model", model, "--host", host, "--port", strconv.Itoa(port),
		"--parallel", strconv.Itoa(LlamaParallel), "--ctx-size", strconv.Itoa(LlamaServerContext),
		"--cache-reuse", strconv.Itoa(LlamaServerCacheReuse), "--metrics",
	}
	if alias != "" {
		args = append(args, "--alias", alias)
	}
	if gpus > 0 {
		args = append(args, "--n-gpu-layers", "999")
	}
	return args
}

// llamaCommand builds the argv and environment of an ollama or llamacpp engine.
func (p *plan) llamaCommand(host string, port int) []error {
	s := p.spec
	var errs []error
	switch s.Kind {
	case KindOllama:
		bin := s.Binary
		if bin == "" {
			bin = "ollama"
		}
		p.argv = append([]string{bin, "serve"}, s.Args...)
		p.env = append(p.env, OllamaEnv(host, port)...)
		if err := lookPath(bin); err != nil {
			errs = append(errs, fmt.Errorf("ollama executable %q not found (%v): install Ollama or set binary", bin, err))
		}
	case KindLlamaCpp:
		bin := s.Binary
		if bin == "" {
			bin = "llama-server"
		}
		alias := ""
		if len(s.ServedNames) > 0 {
			alias = s.ServedNames[0]
		}
		p.argv = append(append([]string{bin}, LlamaServerArgs(host, port, s.Model, alias, len(p.gpus))...), s.Args...)
		if err := lookPath(bin); err != nil {
			errs = append(errs, fmt.Errorf("llama-server executable %q not found (%v): install llama.cpp or set binary", bin, err))
		}
	}
	return errs
}
