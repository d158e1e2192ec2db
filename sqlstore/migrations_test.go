package sqlstore

import (
	"testing"
	"testing/fstest"
)

func TestLoadMigrations(t *testing.T) {
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	tests := []struct {
		name  string
		files fstest.MapFS
		want  []string // file names in order; nil when an error is wanted
	}{
		{"ordered by version, not name", fstest.MapFS{
			"m/0010_later.sql": file("B"), "m/0002_first.sql": file("A"), "m/README.md": file("not a migration"),
		}, []string{"0002_first.sql", "0010_later.sql"}},
		{"empty", fstest.MapFS{"m/README.md": file("")}, []string{}},
		{"duplicate version", fstest.MapFS{"m/0001_a.sql": file(""), "m/1_b.sql": file("")}, nil},
		{"no version", fstest.MapFS{"m/init.sql": file("")}, nil},
		{"version zero", fstest.MapFS{"m/0000_init.sql": file("")}, nil},
	}
	for _, tc := range tests {
		ms, err := LoadMigrations(tc.files, "m")
		if tc.want == nil {
			if err == nil {
				t.Errorf("LoadMigrations(%s) = %v, want an error", tc.name, ms)
			}
			continue
		}
		if err != nil || len(ms) != len(tc.want) {
			t.Errorf("LoadMigrations(%s) = %v, %v; want %v", tc.name, ms, err, tc.want)
			continue
		}
		for i, m := range ms {
			if m.Name != tc.want[i] {
				t.Errorf("LoadMigrations(%s)[%d] = %q, want %q", tc.name, i, m.Name, tc.want[i])
			}
		}
	}
	ms, err := LoadMigrations(fstest.MapFS{"m/0003_x.sql": file("CREATE TABLE x ()")}, "m")
	if err != nil || len(ms) != 1 || ms[0].Version != 3 || ms[0].SQL != "CREATE TABLE x ()" {
		t.Errorf("LoadMigrations(one file) = %+v, %v; want version 3 with its SQL", ms, err)
	}
}
