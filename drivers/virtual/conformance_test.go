package virtual_test

import (
	"errors"
	"testing"

	"github.com/voltage-ems/voltage/drivers"
	"github.com/voltage-ems/voltage/drivers/driverstest"
	"github.com/voltage-ems/voltage/drivers/virtual"
)

func TestConformance(t *testing.T) {
	driverstest.Run(t, func(t *testing.T) (drivers.Driver, driverstest.Env) {
		ch := testChannel()
		d, err := virtual.NewDriver(ch, nil)
		if err != nil {
			t.Fatal(err)
		}
		return d, driverstest.Env{
			Channel:       ch,
			WritableIndex: idxAdjustment,
			WriteValue:    42.5,
			Disconnect:    func() { d.FailReads(errors.New("device unplugged")) },
			Reconnect:     d.Recover,
		}
	})
}
