package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// summary is the distribution of one series of latencies.
type summary struct {
	N                  int
	P50, P90, P99, Max time.Duration
}

// summarize returns the nearest-rank percentiles of ds (which it sorts in
// place). An empty series gives a zero summary.
func summarize(ds []time.Duration) summary {
	if len(ds) == 0 {
		return summary{}
	}
	slices.Sort(ds)
	return summary{
		N:   len(ds),
		P50: percentile(ds, 50),
		P90: percentile(ds, 90),
		P99: percentile(ds, 99),
		Max: ds[len(ds)-1],
	}
}

// percentile returns the nearest-rank p-th percentile of the sorted series
// ds: the smallest value that at least p% of the series is at or below.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// Nearest rank: ceil(p/100 * n), 1-based. Integer arithmetic on
	// hundredths keeps 99% of 1000 exactly at rank 990.
	n := len(sorted)
	rank := (int(p*100)*n + 9999) / 10000
	if rank < 1 {
		rank = 1
	}
	if rank > n {
		rank = n
	}
	return sorted[rank-1]
}

// ratio returns a/b, or 0 when b is zero.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// ms formats d in milliseconds with three decimals, the unit every table
// here uses.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond))
}

// table prints aligned rows of latency summaries.
type table struct {
	w    io.Writer
	rows [][]string
}

func newTable(w io.Writer) *table {
	return &table{w: w, rows: [][]string{{"series", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"}}}
}

// add appends one summary row.
func (t *table) add(name string, s summary) {
	t.rows = append(t.rows, []string{name, fmt.Sprint(s.N), ms(s.P50), ms(s.P90), ms(s.P99), ms(s.Max)})
}

// flush writes the table with columns padded to their widest cell.
func (t *table) flush() {
	writeAligned(t.w, t.rows)
	t.rows = t.rows[:1]
}

// writeAligned writes rows as space-padded columns; the first column is
// left-aligned and the rest right-aligned, as numbers read best.
func writeAligned(w io.Writer, rows [][]string) {
	widths := map[int]int{}
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			if i == 0 {
				b.WriteString(c + strings.Repeat(" ", widths[i]-len(c)))
				continue
			}
			b.WriteString("  " + strings.Repeat(" ", widths[i]-len(c)) + c)
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}
