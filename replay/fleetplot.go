package replay

import (
	"fmt"
	"html"
	"io"
	"math"
)

// WriteFleetPlot draws, as SVG, the engines each result held over time (top: serving plus
// starting plus draining; a static fleet is a flat line) and the p90 TTFT of every planner
// interval (bottom, log scale).
func WriteFleetPlot(w io.Writer, title string, results []*Result) error {
	const (
		width, panel           = 860, 240
		left, right, top, base = 70, 170, 40, 50
	)
	height := top + 2*panel + 40 + base
	pw := float64(width - left - right)
	var tmax, nmax, lmax float64
	lmin := math.Inf(1)
	for _, r := range results {
		tmax = math.Max(tmax, r.VirtualSeconds)
		nmax = math.Max(nmax, float64(r.MaxEnginesUsed))
		for _, p := range r.Timeline {
			tmax = math.Max(tmax, p.At)
			if p.TTFTP90 > 0 {
				lmin, lmax = math.Min(lmin, p.TTFTP90), math.Max(lmax, p.TTFTP90)
			}
		}
	}
	if tmax <= 0 {
		tmax = 1
	}
	nmax = math.Max(1, nmax)
	if math.IsInf(lmin, 1) {
		lmin, lmax = 1, 10
	}
	llo, lhi := math.Floor(math.Log10(lmin)), math.Ceil(math.Log10(lmax))
	if lhi <= llo {
		lhi = llo + 1
	}
	x := func(t float64) float64 { return float64(left) + pw*t/tmax }
	y1 := func(n float64) float64 { return float64(top) + float64(panel)*(1-n/(nmax*1.1)) }
	top2 := float64(top + panel + 40)
	y2 := func(ms float64) float64 {
		return top2 + float64(panel)*(1-(math.Log10(math.Max(ms, math.Pow(10, llo)))-llo)/(lhi-llo))
	}
	pr := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	pr(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	pr(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	pr(`<text x="%d" y="24" font-size="15">%s</text>`+"\n", left, html.EscapeString(title))
	for i := 0; i <= 4; i++ {
		n := nmax * 1.1 * float64(i) / 4
		pr(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%.0f</text>`+"\n", left, y1(n), width-right, y1(n), left-6, y1(n)+4, n)
	}
	for d := llo; d <= lhi; d++ {
		ms := math.Pow(10, d)
		pr(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left, y2(ms), width-right, y2(ms), left-6, y2(ms)+4, msLabel(ms))
	}
	for i := 0; i <= 5; i++ {
		t := tmax * float64(i) / 5
		pr(`<text x="%.1f" y="%d" text-anchor="middle">%.0f s</text>`+"\n", x(t), height-base+18, t)
	}
	pr(`<text transform="translate(18 %d) rotate(-90)" text-anchor="middle">engines held</text>`+"\n", top+panel/2)
	pr(`<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle">TTFT p90 per interval</text>`+"\n", top2+float64(panel)/2)
	for i, r := range results {
		col := palette[i%len(palette)]
		name := r.Planner
		if name == "" {
			name = r.Policy
		}
		if len(r.Timeline) == 0 {
			pr(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>`+"\n", x(0), y1(float64(r.MaxEnginesUsed)), x(r.VirtualSeconds), y1(float64(r.MaxEnginesUsed)), col)
		} else {
			pr(`<polyline fill="none" stroke="%s" stroke-width="2" points="`, col)
			for _, p := range r.Timeline {
				pr("%.1f,%.1f ", x(p.At), y1(float64(p.Ready+p.Starting+p.Draining)))
			}
			pr("\"/>\n")
			pr(`<polyline fill="none" stroke="%s" stroke-width="1.5" points="`, col)
			for _, p := range r.Timeline {
				if p.TTFTP90 > 0 {
					pr("%.1f,%.1f ", x(p.At), y2(p.TTFTP90))
				}
			}
			pr("\"/>\n")
		}
		ly := top + 16*i
		pr(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/><text x="%d" y="%d">%s</text>`+"\n", width-right+10, ly, width-right+30, ly, col, width-right+36, ly+4, html.EscapeString(name))
	}
	pr("</svg>\n")
	return nil
}
