package replay

import (
	"fmt"
	"html"
	"io"
	"math"
)

// palette for up to eight series; more wrap around.
var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"}

// WriteTTFTCDF draws the TTFT CDF of every result (a line each, log-scaled time axis) as SVG.
func WriteTTFTCDF(w io.Writer, title string, results []*Result) error {
	const (
		width, height          = 760, 460
		left, right, top, base = 70, 170, 40, 60
	)
	pw, ph := float64(width-left-right), float64(height-top-base)
	lo, hi := math.Inf(1), 0.0
	for _, r := range results {
		for _, x := range r.TTFTs {
			if x > 0 {
				lo = math.Min(lo, x)
			}
			hi = math.Max(hi, x)
		}
	}
	if math.IsInf(lo, 1) || hi <= 0 {
		lo, hi = 1, 10
	}
	llo, lhi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if lhi <= llo {
		lhi = llo + 1
	}
	xpos := func(ms float64) float64 {
		if ms <= 0 {
			ms = math.Pow(10, llo)
		}
		return float64(left) + pw*(math.Log10(ms)-llo)/(lhi-llo)
	}
	ypos := func(p float64) float64 { return float64(top) + ph*(1-p) }

	pr := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	pr(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	pr(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	pr(`<text x="%d" y="24" font-size="15">%s</text>`+"\n", left, html.EscapeString(title))
	for d := llo; d <= lhi; d++ {
		x := xpos(math.Pow(10, d))
		pr(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", x, top, x, height-base)
		pr(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, height-base+18, msLabel(math.Pow(10, d)))
	}
	for _, p := range []float64{0, 0.25, 0.5, 0.75, 0.9, 1} {
		y := ypos(p)
		pr(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, width-right, y)
		pr(`<text x="%d" y="%.1f" text-anchor="end">%.2f</text>`+"\n", left-6, y+4, p)
	}
	pr(`<text x="%.1f" y="%d" text-anchor="middle">time to first token (log scale)</text>`+"\n", float64(left)+pw/2, height-18)
	pr(`<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle">fraction of requests</text>`+"\n", float64(top)+ph/2)
	for i, r := range results {
		color := palette[i%len(palette)]
		n := len(r.TTFTs)
		if n > 0 {
			pr(`<polyline fill="none" stroke="%s" stroke-width="2" points="`, color)
			step := max(1, n/600)
			for j := 0; j < n; j += step {
				pr("%.1f,%.1f ", xpos(r.TTFTs[j]), ypos(float64(j+1)/float64(n)))
			}
			pr("%.1f,%.1f", xpos(r.TTFTs[n-1]), ypos(1))
			pr(`"/>` + "\n")
		}
		ly := top + 10 + 20*i
		pr(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", width-right+12, ly, width-right+32, ly, color)
		pr(`<text x="%d" y="%d">%s (p90 %s)</text>`+"\n", width-right+38, ly+4, html.EscapeString(r.Policy), msLabel(r.TTFTP90))
	}
	_, err := fmt.Fprintln(w, "</svg>")
	return err
}

func msLabel(ms float64) string {
	switch {
	case ms >= 1000:
		return fmt.Sprintf("%gs", math.Round(ms/100)/10)
	case ms >= 1:
		return fmt.Sprintf("%gms", math.Round(ms*10)/10)
	}
	return fmt.Sprintf("%gus", math.Round(ms*1000))
}
