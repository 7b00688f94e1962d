//go:build !unix

package cli

import "os"

// fileOwner returns -1: file owners are a Unix notion.
func fileOwner(os.FileInfo) int { return -1 }

// fileGroup returns -1: file owners are a Unix notion.
func fileGroup(string) int { return -1 }
