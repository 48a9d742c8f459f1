package vmm

import "math/bits"

// DirtySet is a set of guest pages, named by their index in the guest-memory
// mapping, kept as a bitmap. The epoch loop reuses one DirtySet per epoch, so
// harvesting allocates nothing.
type DirtySet struct {
	words []uint64
	pages uint64
}

// NewDirtySet returns an empty set able to hold pages [0, pages).
func NewDirtySet(pages uint64) *DirtySet {
	return &DirtySet{words: make([]uint64, (pages+63)/64), pages: pages}
}

// Capacity is the number of pages the set can hold.
func (d *DirtySet) Capacity() uint64 { return d.pages }

// Add puts page in the set.
func (d *DirtySet) Add(page uint64) { d.words[page/64] |= 1 << (page % 64) }

// Has reports whether page is in the set.
func (d *DirtySet) Has(page uint64) bool { return d.words[page/64]&(1<<(page%64)) != 0 }

// AddAll puts every page of the set's capacity in it.
func (d *DirtySet) AddAll() {
	for i := range d.words {
		d.words[i] = ^uint64(0)
	}
	if r := d.pages % 64; r != 0 {
		d.words[len(d.words)-1] = 1<<r - 1
	}
}

// Reset empties the set.
func (d *DirtySet) Reset() { clear(d.words) }

// Len is the number of pages in the set.
func (d *DirtySet) Len() int {
	n := 0
	for _, w := range d.words {
		n += bits.OnesCount64(w)
	}
	return n
}

// AppendPages appends the pages of the set to dst in ascending order.
func (d *DirtySet) AppendPages(dst []uint64) []uint64 {
	for i, w := range d.words {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			dst = append(dst, uint64(i)*64+uint64(b))
			w &= w - 1
		}
	}
	return dst
}

// orWords ORs a KVM dirty bitmap for a slot whose first page is first into
// the set. KVM's bitmaps are little-endian arrays of 64-bit words, bit i for
// slot page i.
func (d *DirtySet) orWords(first uint64, bitmap []uint64) {
	if first%64 == 0 {
		dw := d.words[first/64:]
		for i, w := range bitmap {
			dw[i] |= w
		}
		return
	}
	for i, w := range bitmap {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			d.Add(first + uint64(i)*64 + uint64(b))
			w &= w - 1
		}
	}
}
