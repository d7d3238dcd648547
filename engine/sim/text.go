package sim

import "strings"

// words are what the simulator "generates". Each is kept only when " "+word is one token of
// the served tokenizer, so a completion's text re-tokenizes to exactly the ids the engine
// cached for it, and a follow-up turn that quotes the answer hits the prefix cache as it would
// on vLLM.
var words = strings.Fields(`the of and to in is that it for was on are as with his they at be this
from have or by one had not but what all were when we there can an your which their said if do
will each about how up out them then she many some so these would other into has more her two
like him see time could no make than first been its who now people my made over did down only
way find use may water long little very after words called just where most know get through back
much go good new write our me man too any day same right look think also around another came come
work three word must because does part even place well such here take why things help put years
different away again off went old number great tell men say small every found still between name
should home big give air line set own under read last never us left end along while might next
sound below saw something thought both few those always looked show large often together asked
house world going want school important until form food keep children feet land side without boy
once animals life enough took sometimes four head above kind began almost live page got earth
need far hand high year mother light parts country father let night following picture being study
second eyes soon times story boys since white days ever paper hard near sentence better best across
during today others however sure means knew try told young miles sun ways thing whole hear example
heard several change answer room sea against top turned learn point city play toward five using
himself usually money seen car morning body upon family later move face door cut done group true
leave color red friends easy music open`)

// vocabulary is the words that are single tokens, with their ids.
type vocabulary struct {
	text []string // " word"
	ids  []uint32
	pos  map[uint32]int // id -> index in ids
}

// newVocabulary keeps the words encode turns into exactly one token.
func newVocabulary(encode func(string) []uint32) vocabulary {
	var v vocabulary
	for _, w := range words {
		ids := encode(" " + w)
		if len(ids) == 1 {
			v.text = append(v.text, " "+w)
			v.ids = append(v.ids, ids[0])
		}
	}
	if len(v.ids) == 0 { // a tokenizer without such words: fall back to numbered pieces
		for i := range 64 {
			v.text = append(v.text, " w"+string(rune('a'+i%26))+string(rune('a'+i/26)))
			v.ids = append(v.ids, uint32(1000+i))
		}
	}
	v.pos = make(map[uint32]int, len(v.ids))
	for i, id := range v.ids {
		v.pos[id] = i
	}
	return v
}

// completion is the deterministic answer for a prompt and choice: n token ids drawn from
// seed.
func (v vocabulary) completion(seed uint64, n int) []uint32 {
	ids := make([]uint32, n)
	for i := range n {
		ids[i] = v.ids[int(splitmix(seed+uint64(i))%uint64(len(v.ids)))]
	}
	return ids
}

// promptSeed hashes a prompt's tokens and a choice index into a seed.
func promptSeed(prompt []uint32, choice int) uint64 {
	h := uint64(0xcbf29ce484222325)
	for _, t := range prompt {
		h = (h ^ uint64(t)) * 0x100000001b3
	}
	return splitmix(h + uint64(choice)*0x9e3779b97f4a7c15)
}

// eosPoint is where a request without ignore_eos "samples" its end of sequence: between 8 and
// 256 tokens, fixed by the seed.
func eosPoint(seed uint64) int { return 8 + int(splitmix(seed^0x5bd1e995)%249) }

// chain is the answer of chained output: the words in vocabulary order, cyclically, starting
// after the prompt's last token when that is one of the words, else at a word drawn from
// seed. A prompt that ends with part of such an answer (a request continued elsewhere)
// gets the rest of the same answer, so a repeated or skipped word is visible as a break in
// the order.
func (v vocabulary) chain(prompt []uint32, seed uint64, n int) []uint32 {
	at := int(seed % uint64(len(v.ids)))
	if len(prompt) > 0 {
		if i, ok := v.pos[prompt[len(prompt)-1]]; ok {
			at = i + 1
		}
	}
	ids := make([]uint32, n)
	for i := range n {
		ids[i] = v.ids[(at+i)%len(v.ids)]
	}
	return ids
}
