// Package acquisition holds the actors that read field devices: one channel
// actor per configured channel, one device actor per slave below it, and one
// point actor per point below that.
//
// The channel actor connects its driver, polls on a self-scheduled tick (the
// next poll is scheduled when the previous one is done, the I/O itself runs
// off the actor's goroutine), reconnects with backoff, and marks every point
// comm_lost while disconnected. Device actors fan a poll's samples out to
// their point actors. Point actors apply change detection and deadband and
// hand updates to a Sink (the Redis writer and local consumers). Points are
// supervised one by one: a failing point restarts alone with backoff.
package acquisition
