package planner

import "math"

// series holds the last values of one signal, one per interval, oldest first.
type series struct {
	xs  []float64
	cap int
}

func newSeries(n int) series { return series{cap: max(1, n)} }

func (s *series) add(x float64) {
	if len(s.xs) == s.cap {
		copy(s.xs, s.xs[1:])
		s.xs = s.xs[:len(s.xs)-1]
	}
	s.xs = append(s.xs, x)
}

// held is the level the last k values all reach (their minimum): a level that held for k
// intervals, where one noisy interval does not count.
func (s *series) held(k int) float64 {
	n := len(s.xs)
	if n == 0 {
		return 0
	}
	m := s.xs[n-1]
	for _, x := range s.xs[max(0, n-k):] {
		m = math.Min(m, x)
	}
	return m
}

// peak is the largest value (0 when empty).
func (s *series) peak() float64 {
	var m float64
	for _, x := range s.xs {
		m = math.Max(m, x)
	}
	return m
}

func (s *series) mean() float64 {
	if len(s.xs) == 0 {
		return 0
	}
	var sum float64
	for _, x := range s.xs {
		sum += x
	}
	return sum / float64(len(s.xs))
}

// forecast is the value h intervals after the last one: the mean of the last three values
// plus their trend, when the last three changes all go the same way (a ramp: the smallest of
// them per interval); a single jump (a step) or noise around a level adds no trend. Never
// negative.
func (s *series) forecast(h float64) float64 {
	n := len(s.xs)
	k := min(n, 3)
	if k == 0 {
		return 0
	}
	var level float64
	for _, x := range s.xs[n-k:] {
		level += x
	}
	level /= float64(k)
	if n < 4 {
		return level
	}
	slope := math.Inf(1)
	up, down := true, true
	for i := n - 3; i < n; i++ {
		d := s.xs[i] - s.xs[i-1]
		up, down = up && d > 0, down && d < 0
		if math.Abs(d) < math.Abs(slope) {
			slope = d
		}
	}
	if !up && !down {
		return level
	}
	// the level sits at the middle of the last three values, one interval before the last
	return math.Max(0, level+slope*(1+h))
}

// stddev is the standard deviation of the values around their mean (0 for fewer than two).
func (s *series) stddev() float64 {
	n := len(s.xs)
	if n < 2 {
		return 0
	}
	mu := s.mean()
	var ss float64
	for _, x := range s.xs {
		ss += (x - mu) * (x - mu)
	}
	return math.Sqrt(ss / float64(n-1))
}
