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

func (s *series) last() float64 {
	if len(s.xs) == 0 {
		return 0
	}
	return s.xs[len(s.xs)-1]
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

// forecast is the value h intervals after the last one: the window's mean plus its linear
// trend, when the trend is significant (its slope more than twice its standard error, so
// noise around a steady level does not extrapolate), else the mean. Never negative.
func (s *series) forecast(h float64) float64 {
	n := len(s.xs)
	mean := s.mean()
	if n < 3 {
		return mean
	}
	// least squares over x = 0..n-1
	xm := float64(n-1) / 2
	var sxx, sxy float64
	for i, y := range s.xs {
		dx := float64(i) - xm
		sxx += dx * dx
		sxy += dx * (y - mean)
	}
	slope := sxy / sxx
	var sse float64
	for i, y := range s.xs {
		r := y - (mean + slope*(float64(i)-xm))
		sse += r * r
	}
	se := math.Sqrt(sse/float64(n-2)) / math.Sqrt(sxx)
	if math.Abs(slope) <= 2*se {
		return mean
	}
	return math.Max(0, mean+slope*(float64(n-1)-xm+h))
}
