// Package messages holds the data types that flow between actors and onto
// Redis. It is a leaf: it imports nothing from the project.
package messages
