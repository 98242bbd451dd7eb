package config

import "github.com/voltage-ems/voltage/messages"

// index maps channel ids and point keys to positions in Config.Channels.
type index struct {
	channels map[uint32]int
	points   map[messages.PointKey][2]int
}

func buildIndex(chs []Channel) *index {
	ix := &index{channels: map[uint32]int{}, points: map[messages.PointKey][2]int{}}
	for i := range chs {
		ch := &chs[i]
		if _, dup := ix.channels[ch.ID]; dup {
			continue
		}
		ix.channels[ch.ID] = i
		for j := range ch.Points {
			k := ch.Points[j].Key(ch.ID)
			if _, dup := ix.points[k]; !dup {
				ix.points[k] = [2]int{i, j}
			}
		}
	}
	return ix
}

// Channel returns the channel with the given id, or nil.
//
// Load builds an index for the lookup; when the index misses (a Config built
// by hand, or changed after Load) the channels are searched in order, so the
// answer is always right.
func (c *Config) Channel(id uint32) *Channel {
	if c.index != nil {
		if i, ok := c.index.channels[id]; ok && i < len(c.Channels) && c.Channels[i].ID == id {
			return &c.Channels[i]
		}
	}
	for i := range c.Channels {
		if c.Channels[i].ID == id {
			return &c.Channels[i]
		}
	}
	return nil
}

// Point returns the point with the given key and its channel, or nil, nil.
// It uses the same index as Channel.
func (c *Config) Point(key messages.PointKey) (*Channel, *Point) {
	if c.index != nil {
		if pos, ok := c.index.points[key]; ok && pos[0] < len(c.Channels) && pos[1] < len(c.Channels[pos[0]].Points) {
			i, j := pos[0], pos[1]
			ch := &c.Channels[i]
			if p := &ch.Points[j]; ch.ID == key.Channel && p.ID == key.Point && p.Type == key.Type {
				return ch, p
			}
		}
	}
	for i := range c.Channels {
		ch := &c.Channels[i]
		if ch.ID != key.Channel {
			continue
		}
		for j := range ch.Points {
			if p := &ch.Points[j]; p.ID == key.Point && p.Type == key.Type {
				return ch, p
			}
		}
		return nil, nil
	}
	return nil, nil
}
