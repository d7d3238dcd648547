package openai

import "math"

// sampling is the view of the sampling fields chat and completion requests share, checked as
// vLLM's SamplingParams checks them.
type sampling struct {
	stream, streamOptions           bool
	maxTokens, minTokens, n, bestOf *int
	maxForMin                       int
	temperature, topP, minP         *float64
	topK                            *int
	presence, frequency, repetition *float64
	promptLogprobs, truncate        *int
	cacheSalt                       *string
}

func validateSampling(s sampling) error {
	if s.streamOptions && !s.stream {
		return BadRequest("stream_options", "Stream options can only be defined when `stream=True`.")
	}
	if s.maxTokens != nil && *s.maxTokens < 1 {
		return BadRequest("max_tokens", "Invalid value for 'max_tokens': must be at least 1, got %d.", *s.maxTokens)
	}
	if s.minTokens != nil {
		if *s.minTokens < 0 {
			return BadRequest("min_tokens", "Invalid value for 'min_tokens': must be greater than or equal to 0, got %d.", *s.minTokens)
		}
		if s.maxForMin > 0 && *s.minTokens > s.maxForMin {
			return BadRequest("min_tokens", "Invalid value for 'min_tokens': must be less than or equal to max_tokens=%d, got %d.", s.maxForMin, *s.minTokens)
		}
	}
	if s.n != nil && *s.n < 1 {
		return BadRequest("n", "Invalid value for 'n': must be at least 1, got %d.", *s.n)
	}
	if s.bestOf != nil {
		n := 1
		if s.n != nil {
			n = *s.n
		}
		if *s.bestOf < n {
			return BadRequest("best_of", "Invalid value for 'best_of': must be greater than or equal to n=%d, got %d.", n, *s.bestOf)
		}
	}
	if s.temperature != nil && (*s.temperature < 0 || math.IsNaN(*s.temperature)) {
		return BadRequest("temperature", "Invalid value for 'temperature': must be non-negative, got %v.", *s.temperature)
	}
	if s.topP != nil && !(*s.topP > 0 && *s.topP <= 1) {
		return BadRequest("top_p", "Invalid value for 'top_p': must be in (0, 1], got %v.", *s.topP)
	}
	if s.topK != nil && *s.topK < -1 {
		return BadRequest("top_k", "Invalid value for 'top_k': must be -1 or 0 (disable), or at least 1, got %d.", *s.topK)
	}
	if s.minP != nil && !(*s.minP >= 0 && *s.minP <= 1) {
		return BadRequest("min_p", "Invalid value for 'min_p': must be in [0, 1], got %v.", *s.minP)
	}
	if s.presence != nil && !(*s.presence >= -2 && *s.presence <= 2) {
		return BadRequest("presence_penalty", "Invalid value for 'presence_penalty': must be in [-2, 2], got %v.", *s.presence)
	}
	if s.frequency != nil && !(*s.frequency >= -2 && *s.frequency <= 2) {
		return BadRequest("frequency_penalty", "Invalid value for 'frequency_penalty': must be in [-2, 2], got %v.", *s.frequency)
	}
	if s.repetition != nil && !(*s.repetition > 0) {
		return BadRequest("repetition_penalty", "Invalid value for 'repetition_penalty': must be greater than zero, got %v.", *s.repetition)
	}
	if s.promptLogprobs != nil {
		if *s.promptLogprobs < -1 {
			return BadRequest("prompt_logprobs", "Invalid value for 'prompt_logprobs': must be a non-negative value or -1, got %d.", *s.promptLogprobs)
		}
		if s.stream {
			return BadRequest("prompt_logprobs", "`prompt_logprobs` are not available when `stream=True`.")
		}
	}
	if s.truncate != nil && *s.truncate < -1 {
		return BadRequest("truncate_prompt_tokens", "Invalid value for 'truncate_prompt_tokens': must be -1 or at least 1, got %d.", *s.truncate)
	}
	if s.cacheSalt != nil && *s.cacheSalt == "" {
		return BadRequest("cache_salt", "Parameter 'cache_salt' must be a non-empty string if provided.")
	}
	return nil
}
